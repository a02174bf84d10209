"""City ingestion: sources, validation, quarantine, pseudonymisation, the Spark job."""
