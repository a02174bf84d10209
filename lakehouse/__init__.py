"""The foundation of medshare: settings, topology, object storage, Delta, Spark and Kafka access."""
