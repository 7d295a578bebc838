"""Pascal VOC 2012 (being written)."""

SIGNATURE = "JPEGImages/ SegmentationClass/ ImageSets/Segmentation/"
OPTIONS = ("sbd",)


def detect(root) -> bool:
    return False


def load(*args):
    raise NotImplementedError
