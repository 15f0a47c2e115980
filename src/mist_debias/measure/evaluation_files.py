"""The names of an evaluation folder's files (importable without torch, for readers such as the report)."""

FORMAT = "mist-debias-evaluation"
FORMAT_VERSION = 1
MANIFEST_FILE = "evaluation.json"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
METRICS_FILE = "metrics.json"
IMAGES_DIR = "images"
