"""The logic behind the command-line tools, one module per tool (predict, ensemble_crf, tune_crf, pseudo_label):
tools/<name>.py parses the arguments and calls into here, and tests import these modules."""
