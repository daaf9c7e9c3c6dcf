"""The OpenAI-compatible HTTP API as a Ray Serve application on vLLM (no postponed annotations:
FastAPI must see `Request` itself in the route signatures).

One deployment, one replica per process: it starts vLLM's engine and vLLM's own OpenAI app
(``stages/deploy/vllm_engine.py``) beside its event loop, so ``/health`` answers at once
(503 with the reason while the model loads or when it failed). Requests to
``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` and ``/metrics`` pass
lmforge's admission (``stages/deploy/admission.py``: API key, caps, model name, no field
dropped in silence) and go to vLLM's app; any other path is a 404 in OpenAI's error shape.
"""


import asyncio
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from stages.deploy.admission import Admission, Rules, error_body, method_not_allowed
from stages.deploy.config import ServerConfig

api = FastAPI(title="lmforge", docs_url=None, redoc_url=None)


def _replica() -> "LMServer | None":
    """This process's replica (Ray Serve runs each in its own process). Looked up through the imported module:
    Serve ships the deployment class and the app by value, so a plain global here would be a copy's."""
    import sys

    return getattr(sys.modules[__name__], "REPLICA", None)


def _not_ready() -> tuple[int, dict]:
    replica = _replica()
    if replica is not None and replica.load_error:
        return 503, error_body(f"the model failed to load: {replica.load_error}", code="model_load_failed",
                               kind="server_error")
    return 503, error_body("the model is still loading; retry shortly", code="model_loading", kind="server_error")


api.add_middleware(Admission, engine=lambda: getattr(_replica(), "engine_app", None),
                   rules=lambda: getattr(_replica(), "rules", None), not_ready=_not_ready)


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(message, param, code, kind))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and wrong methods answer in OpenAI's error shape, like every other error here."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return _error(404, f"Invalid URL ({where}): no such route", code="not_found")
    if exc.status_code == 405:
        allowed = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
        status, body, headers = method_not_allowed(request.method, request.url.path, allowed)
        return JSONResponse(status_code=status, content=body, headers=headers)
    return _error(exc.status_code, str(exc.detail))


class LMServer:
    def __init__(self, model_dir: str, model_name: str, server: dict | None = None):
        """``server``: a ``deploy.server`` config (``ServerConfig``) as a dict, as Ray Serve hands it over."""
        import importlib

        settings = ServerConfig(**(server or {}))
        self.model_name = model_name
        self.rules: Rules | None = None  # set with the engine: nothing is admitted before it answers
        self.engine_app = None
        self.engine = None
        self.load_error: str | None = None
        importlib.import_module(__name__).REPLICA = self
        # Serve runs the constructor on the replica's event loop: the engine loads as a task on it
        self._loading = asyncio.get_running_loop().create_task(self._load(model_dir, settings))

    async def _load(self, model_dir: str, settings: ServerConfig) -> None:
        import torch

        from stages.deploy import vllm_engine

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
        # vLLM's default on CPU pins its worker to one core and keeps the others for the front end: on 2 cores that
        # halved its speed (bench/README.md, serving on vLLM); unbound, its OpenMP threads share the cores
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        try:
            from stages.core import storage

            # this replica's node may share no disk with the driver: an object-storage location is copied here
            model_dir = str(await asyncio.to_thread(storage.fetched, model_dir))
            reason = vllm_engine.unsupported(model_dir, on_gpu=torch.cuda.is_available())
            if reason:
                raise RuntimeError(reason)
            args = vllm_engine.cli_args(model_dir, self.model_name, max_model_len=settings.max_model_len,
                                        dtype=settings.dtype, max_num_seqs=settings.max_num_seqs)
            self.engine_app, self.engine = await vllm_engine.build(args)
            self.rules = Rules(model_name=self.model_name, api_key=settings.api_key,
                               max_request_bytes=settings.max_request_bytes, max_tokens=settings.max_tokens,
                               max_n=settings.max_n)
        except Exception as exc:  # noqa: BLE001 - reported by /health and every request, never a hang
            self.load_error = f"{type(exc).__name__}: {exc}"

    @api.get("/health")
    def health(self):
        """200 once the model answers; 503 with the reason while it loads or when loading failed."""
        if self.rules is not None:
            return {"status": "ok", "model": self.model_name}
        status = "failed" if self.load_error else "loading"
        reason = self.load_error or "loading the model"
        return JSONResponse(status_code=503, content={"status": status, "model": self.model_name, "reason": reason})

    def __del__(self):
        if self.engine is not None:
            self.engine.shutdown()


# the Ray Serve deployment: LMServer's routes on the FastAPI app (LMServer itself stays a plain class)
LMDeployment = serve.deployment(max_ongoing_requests=256)(serve.ingress(api)(LMServer))


def build(model_dir, model_name: str, server: ServerConfig):
    return LMDeployment.bind(str(model_dir), model_name, server.model_dump())
