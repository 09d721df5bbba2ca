"""Readers and writers: one per kind of file (images and label maps, COCO jsons, class probabilities,
checkpoints, submission CSVs) and the one atomic writer. The bottom layer: it imports nothing else of the package
but `mask2former.errors`."""
