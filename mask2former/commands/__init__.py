"""`python -m` entry points of the commands the pipeline starts as child processes (pseudo_label's evaluation,
prediction and training): the same `main` as train_net.py and tools/predict.py, with the parent's plug-ins
(mask2former/config/plugins.py) instead of a file path of the checkout."""
