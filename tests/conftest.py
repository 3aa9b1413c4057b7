pytest_plugins = ["tests.db_fixtures", "tests.s3_fixtures", "tests.hdfs_fixtures", "tests.crash_worker"]
