"""How the real services are obtained (Go, Maven) and run as plain processes on loopback."""
