"""Plain image and mask folders (being written)."""

SIGNATURE = ""
OPTIONS = ("images", "masks", "classes", "val_fraction")


def detect(root) -> bool:
    return False


def load(*args):
    raise NotImplementedError
