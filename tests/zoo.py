"""Frontend choices for tests that exercise a model's own layers."""

import semseg_suite

# Deep frontends are built once per model by the registry-wide shape and round-trip
# test; tests of a model's own layers (auxiliary heads) build it on a lighter one.
BIG_FRONTENDS = {
    "ResNet101", "ResNet152", "DenseNet161", "DenseNet169", "DenseNet201",
    "EfficientNetB5", "EfficientNetB6", "EfficientNetB7", "EfficientNetV2M", "EfficientNetV2L",
    "ResNet101V2", "ResNet152V2", "InceptionResNetV2",
    "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge", "NASNetLarge", "ResNet101LR",
}


def light_frontend(model_name: str) -> str | None:
    """The model's default frontend, or ResNet50 instead of a deep one."""
    frontend = semseg_suite.default_frontend(model_name)
    return "ResNet50" if frontend in BIG_FRONTENDS else frontend


def parents(model, layer_name: str, node: int = 0) -> list[str]:
    """Names of the layers feeding call ``node`` of ``layer_name``, in input order."""
    return [parent.operation.name for parent in model.get_layer(layer_name)._inbound_nodes[node].parent_nodes]
