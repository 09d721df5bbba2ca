"""The data and prediction viewer's computations (tools/viewer.py is the Streamlit front end).

Everything here is plain Python (numpy, pandas) so it can be tested without Streamlit:
  paths    the folders the viewer may read (`Roots`), file signatures for cache keys
  data     a COCO json indexed for browsing, label maps rendered per image, thumbnails
  stats    the Dataset page's tables
  compare  prediction sets (submission CSV or prediction folder) against ground truth or each other
  augment  draws of the training mapper
  launch   the `streamlit run` command line and the localhost check
"""
