"""Make an ONNX model's input batch/height/width dynamic.

CenterFace and YuNet ship with a fixed input shape baked into the graph declaration even
though every op is size-agnostic; freeing it lets veil run them at the photo's own
aspect ratio (no letterbox waste) and at 2x for small faces.
"""

from __future__ import annotations

from pathlib import Path

import onnx


def convert(src: Path, dst: Path) -> dict:
    model = onnx.load(str(src))
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    # Old exporters list initializers as graph inputs: drop them so only the image remains.
    real_inputs = [i for i in graph.input if i.name not in init_names]
    del graph.input[:]
    graph.input.extend(real_inputs)
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        for d, name in zip(dims, ("batch", None, "height", "width")):
            if name:
                d.ClearField("dim_value")
                d.dim_param = name
    for out in graph.output:
        for k, d in enumerate(out.type.tensor_type.shape.dim):
            d.ClearField("dim_value")
            d.dim_param = f"{out.name}_d{k}"
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return {"input": graph.input[0].name, "outputs": [o.name for o in graph.output]}
