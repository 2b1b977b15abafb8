"""Ask a TensorFlow Serving model server to score captions against an image.

    # REST (port 8501), the row ("instances") form:
    python recipes/serving_client.py --server localhost:8501 \
        --model retrieval --features features --split val --image-id 42 \
        --caption "a dog runs on the beach" --caption "a plate of food"

    # gRPC (port 8500), the embed signature, regions from an .npz file
    # (features [N, D], boxes [N, 4] pixels, image_h, image_w):
    python recipes/serving_client.py --server localhost:8500 --grpc \
        --model retrieval --regions image.npz --signature embed \
        --caption "a dog runs on the beach"

    # Print the requests instead of sending them:
    python recipes/serving_client.py --dry-run ...

One request holds one row per caption, each with the image's regions:
`text` [B] strings, `region_features` [B, N, D] float32, `region_boxes`
[B, N, 4] float32 pixel x1, y1, x2, y2, `image_size` [B, 2] int32 (height,
width) and `num_regions` [B] int32. The server tokenizes the captions and
lays out the regions itself (docs/serving.md).
"""
import argparse
import json
import sys
import urllib.request

import numpy as np


def image_regions(args):
    """`(features [N, D], boxes [N, 4], height, width)` of the chosen image."""
    if args.regions:
        with np.load(args.regions) as data:
            return (data["features"].astype(np.float32),
                    data["boxes"].astype(np.float32), int(data["image_h"]),
                    int(data["image_w"]))
    from keras_interbert.data import region_dataset

    for example in region_dataset(args.features, split=args.split):
        if example["image_id"].numpy().decode("utf-8") == args.image_id:
            return (example["features"].numpy(), example["boxes"].numpy(),
                    int(example["image_h"]), int(example["image_w"]))
    sys.exit(f"image {args.image_id!r} is not in {args.features} "
             f"(split {args.split!r}).")


def request_inputs(captions, features, boxes, height, width):
    """The columns of one request: one row per caption, the same image."""
    rows = len(captions)
    return {
        "text": np.array(captions, dtype=object),
        "region_features": np.repeat(features[None], rows, axis=0),
        "region_boxes": np.repeat(boxes[None], rows, axis=0),
        "image_size": np.tile(np.array([[height, width]], np.int32),
                              [rows, 1]),
        "num_regions": np.full([rows], len(features), np.int32),
    }


def _json_value(value):
    return value.tolist() if value.dtype != object else [str(v) for v in
                                                         value]


def rest_body(inputs, signature, form="instances"):
    """The JSON body of `POST /v1/models/NAME:predict`.

    `instances` is the row form (a list of per-row objects); `inputs` the
    columnar form (one array per input).
    """
    if form == "instances":
        rows = len(inputs["text"])
        instances = [{name: _json_value(value[i:i + 1])[0]
                      for name, value in inputs.items()}
                     for i in range(rows)]
        return {"signature_name": signature, "instances": instances}
    return {"signature_name": signature,
            "inputs": {name: _json_value(value)
                       for name, value in inputs.items()}}


def grpc_request(model, signature, inputs):
    """A `tensorflow.serving.PredictRequest` for the gRPC API."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        if value.dtype == object:
            value = np.array([str(v).encode("utf-8") for v in value],
                             dtype=object)
            proto = tf.make_tensor_proto(value, dtype=tf.string)
        else:
            proto = tf.make_tensor_proto(value)
        request.inputs[name].CopyFrom(proto)
    return request


def send_rest(server, model, body, timeout):
    request = urllib.request.Request(
        f"http://{server}/v1/models/{model}:predict",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def send_grpc(server, request, timeout):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout)
    return {name: tf.make_ndarray(proto).tolist()
            for name, proto in response.outputs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="localhost:8501",
                        help="host:port (8501 REST, 8500 gRPC by default)")
    parser.add_argument("--model", required=True,
                        help="the model name the server serves")
    parser.add_argument("--signature", default="serving_default",
                        help="serving_default, score or embed")
    parser.add_argument("--caption", action="append", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--regions", help=".npz with features, boxes, "
                        "image_h, image_w")
    source.add_argument("--features", help="a region-feature folder "
                        "(docs/data.md); with --image-id")
    parser.add_argument("--image-id")
    parser.add_argument("--split", default=None)
    parser.add_argument("--grpc", action="store_true")
    parser.add_argument("--form", choices=("instances", "inputs"),
                        default="instances", help="REST body form")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the request, send nothing")
    args = parser.parse_args(argv)
    if args.features and not args.image_id:
        parser.error("--features needs --image-id")

    features, boxes, height, width = image_regions(args)
    inputs = request_inputs(args.caption, features, boxes, height, width)
    if args.grpc:
        request = grpc_request(args.model, args.signature, inputs)
        if args.dry_run:
            print(request)
            return 0
        outputs = send_grpc(args.server, request, args.timeout)
    else:
        body = rest_body(inputs, args.signature, args.form)
        if args.dry_run:
            print(json.dumps(body)[:2000])
            return 0
        response = send_rest(args.server, args.model, body, args.timeout)
        outputs = response.get("predictions", response.get("outputs"))
    print(json.dumps(outputs, indent=1)[:4000])
    return 0


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
