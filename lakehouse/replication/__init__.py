"""City → province replication through Kafka.

`publisher` (one per city) ships the shareable form of each curated partition a city commit
touched; `replicator` (the province) applies each (city, dataset, version) to the federated
provincial table exactly once; `verify` compares the two sides; `layout` names where everything
lives; `wire` is the message format both ends share. See docs/replication.md.
"""
