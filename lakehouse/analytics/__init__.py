"""Provincial analytics: the analysts' Spark session, the standard jobs and their gold tables, the report."""
