"""Stage 1: read datasets (COCO, Karpathy, Flickr8k, CSV/JSONL), download COCO, build the
vocabulary."""
