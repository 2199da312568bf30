import os

# The core suite loads no entry points (built-ins still register), so installed plugins cannot
# break it; plugin suites opt in with their own fixture.
os.environ.setdefault("CARL_PLUGINS", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
