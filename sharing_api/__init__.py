"""The sharing API (FastAPI): identities, grants, policy, queries, audit."""
