"""The baseline of bench/serving.py: FastAPI + ONNX Runtime and nothing else, one process.

    python bench/bare_server.py MODEL.onnx PORT

Same request shape as the mlcycle endpoint (`{"instances": [{"entity_id", "features"}]}`), no
routing, no request log, no batching.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI

from pipelines.ml.model import onnx_session


def build(model_path: str) -> FastAPI:
    session = onnx_session(open(model_path, "rb").read())  # noqa: SIM115
    inputs = [(i.name, i.type) for i in session.get_inputs()]
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: dict[str, Any]) -> dict[str, Any]:
        rows = [i["features"] for i in body["instances"]]
        feed = {
            name: np.array([[str(r[name])] for r in rows], dtype=object)
            if kind == "tensor(string)"
            else np.array([[r[name]] for r in rows], dtype=np.float32)
            for name, kind in inputs
        }
        (scores,) = session.run(["score"], feed)
        return {
            "predictions": [
                {"entity_id": i["entity_id"], "score": float(s)} for i, s in zip(body["instances"], scores, strict=True)
            ]
        }

    return app


if __name__ == "__main__":
    uvicorn.run(build(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
