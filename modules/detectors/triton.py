"""``backend: triton``: a detector served by an inference server over the KServe V2 protocol
(NVIDIA Triton, or Seldon MLServer), via ``tritonclient`` (HTTP or gRPC).

The served model takes the same tensor as ``backend: onnx`` (float32 NHWC or NCHW images) and
its outputs are read by the same output formats (``output_format``: rows, the bundled model's
``[N, K, 6]``, yolo, yolox, ssd, detr; ``auto`` picks by the output shapes and names the server
reports: a server passes on no ONNX metadata, so class names go in ``class_names``). Input and
output names, layout, size and batching are read from the model metadata; ``input_name`` /
``output_name`` pick among several.

Setup checks, each failing with a ModuleError that says what to fix: the server answers
(liveness) within ``timeout_s``; the model is ready (the error lists the models the server
has, where it can tell); the input is FP32 with a 3-channel axis; the outputs fit a format.

Transfer of the input tensor (3 MB for one 512x512 image), ``shared_memory``:

- ``system``: the tensor is written straight into a POSIX shared-memory region registered with
  the server, and requests carry only its name: no copy into the request, no socket transfer.
  Needs the server on this host, sharing ``/dev/shm`` (a container needs ``--ipc=host`` or a
  shared ``/dev/shm``); newer Triton releases may also want ``--allow-client-shm=true``
  (see your release's shared-memory docs).
  Triton supports it; MLServer does not (registration is refused). A Triton that restricts the
  shared-memory API (PyTriton does by default) needs its access token in ``headers``.
- ``cuda``: the tensor is copied into a CUDA IPC region on ``cuda_device`` that the server
  reads from the GPU (``tritonclient.utils.cuda_shared_memory``, needs CUDA and cupy/the CUDA
  runtime on the client). For discrete GPUs. **Untested here** (no GPU in CI). Jetson does not
  support CUDA IPC: use ``system`` there (its memory is shared by CPU and GPU anyway).
- ``none``: the tensor travels in the request (binary over gRPC; over HTTP binary with Triton,
  JSON with MLServer, which refuses Triton's binary extension: ~4x slower than
  gRPC in ``edgeva bench detector``).
- ``auto`` (default): ``system`` if the URL's host is this machine and the server lists the
  ``system_shared_memory`` extension and accepts the registration, else ``none``.

``binary`` (HTTP only): None picks binary tensors when the server lists ``binary_tensor_data``
(Triton does, MLServer does not); True/False force it.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from edgeva.modules.base import MAX_NAME_CHARS, MAX_PATH_CHARS, NOT_A_PATH, ModuleError
from edgeva.modules.detectors import Backend, BackendConfig, DetectorArgs
from edgeva.modules.detectors.formats import FormatError, FormatOptions, ModelMeta, OutputSpec, bind
from edgeva.modules.detectors.onnx import parse_input_shape

_LOCAL = {"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"}
#: Longest a request may take (a model loading on a CPU server): ``timeout_s``.
MAX_REQUEST_S = 300.0
#: Longest value of one header (an access token).
MAX_HEADER_CHARS = 4096


class TritonConfig(BackendConfig):
    """``backend: triton``: a model served by a KServe V2 server (Triton, MLServer)."""

    type: Literal["triton"] = "triton"
    url: str = Field("localhost:8000", max_length=MAX_PATH_CHARS, json_schema_extra={"edgeva_path": "server"},
                     description="server host:port (HTTP 8000, gRPC 8001 by default); the agent's "
                     "--url-host must allow the host")
    protocol: Literal["http", "grpc"] = Field("http", description="protocol of url")
    model_name: str = Field(min_length=1, max_length=MAX_NAME_CHARS, json_schema_extra=NOT_A_PATH,
                            description="served model name, as the server names it (required)",
                            examples=["centernet"])
    model_version: str = Field("", max_length=MAX_NAME_CHARS, json_schema_extra=NOT_A_PATH,
                               description="model version ('' = the server's default)")
    shared_memory: Literal["auto", "none", "system", "cuda"] = Field(
        "auto", description="how the input tensor reaches the server: system (POSIX shm, "
        "server on this host), cuda (CUDA IPC, discrete GPUs; not on Jetson), none (in the "
        "request), auto (system when local and supported, else none)")
    binary: bool | None = Field(
        None, description="over HTTP: binary tensors (null: when the server supports them; "
        "MLServer does not)")
    cuda_device: int = Field(0, ge=0, le=64, description="with shared_memory cuda: GPU index")
    timeout_s: float = Field(5.0, gt=0.0, le=MAX_REQUEST_S,
                             description="connection and request timeout in seconds (a cold server's first "
                             "inference may take minutes)")
    headers: dict[Annotated[str, Field(max_length=MAX_NAME_CHARS)], Annotated[str, Field(max_length=MAX_HEADER_CHARS)]] = Field(
        {}, max_length=16, description="headers sent with every request, e.g. the access token of a server "
        "that restricts APIs (--http-restricted-api=shared-memory:triton-access-token=SECRET -> "
        "{triton-access-token: SECRET}; over gRPC the key is triton-grpc-protocol-triton-access-token)")


def _brief(e: BaseException) -> str:
    """An exception as one short line (tritonclient's can carry whole HTTP bodies)."""
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


def split_url(url: str) -> tuple[str, str]:
    """(``host:port`` as tritonclient wants it, host) from ``[scheme://]host:port[/]``."""
    hostport = url.split("://", 1)[-1].rstrip("/")
    host = hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 or hostport.startswith("[") else hostport
    return hostport, host


class TritonBackend(Backend):
    config_class = TritonConfig

    def __init__(self, config: TritonConfig, args: DetectorArgs, log: logging.Logger) -> None:
        self._c, self._args, self._log = config, args, log
        self._region: str | None = None
        self._shm_handle: Any = None
        self._cuda_handle: Any = None
        self.url, host = split_url(config.url)
        self._grpc = config.protocol == "grpc"
        where = f"{config.protocol} server at {self.url}"
        try:
            if self._grpc:
                import tritonclient.grpc as tc

                self._client = tc.InferenceServerClient(self.url)
                self._kw: dict[str, Any] = {"client_timeout": config.timeout_s}
            else:
                import tritonclient.http as tc

                self._client = tc.InferenceServerClient(
                    self.url, connection_timeout=config.timeout_s, network_timeout=config.timeout_s
                )
                self._kw = {}
        except ImportError as e:
            raise ModuleError(f"detector: backend triton needs tritonclient[http,grpc]: {e}") from e
        self._tc = tc
        if config.headers:
            self._kw["headers"] = dict(config.headers)
        try:
            if not self._client.is_server_live(**self._kw):
                raise ModuleError(f"detector: the {where} is not live")
            server = self._json(self._client.get_server_metadata(**self._kw))
        except ModuleError:
            self.close()
            raise
        except Exception as e:  # connection refused, timeout, DNS: all mean "no server there"
            self.close()
            raise ModuleError(f"detector: no inference server answers at {self.url} "
                              f"({config.protocol}, timeout {config.timeout_s}s): {_brief(e)}") from e
        self.extensions = set(server.get("extensions") or [])
        self.server_name = server.get("name", "?")
        try:
            self._check_model(where)
            self._binary = (
                False if self._grpc
                else "binary_tensor_data" in self.extensions if config.binary is None
                else config.binary
            )
            self._setup_memory(host in _LOCAL or host == os.uname().nodename)
        except BaseException:
            self.close()
            raise
        log.info("detector: %s model %s on %s %s, input %s %dx%d, batch <= %d, shm %s",
                 self.server_name, config.model_name, config.protocol, self.url, self._in,
                 *self.input_size, self.max_batch, self.shared_memory)

    # -- setup -------------------------------------------------------------------------------

    def _json(self, obj: Any) -> dict:
        """gRPC answers are protobufs; HTTP answers are dicts already."""
        if isinstance(obj, dict):
            return obj
        from google.protobuf.json_format import MessageToDict

        return MessageToDict(obj, preserving_proto_field_name=True)

    def _check_model(self, where: str) -> None:
        c = self._c
        name, version = c.model_name, c.model_version
        try:
            ready = self._client.is_model_ready(name, version, **self._kw)
        except Exception as e:
            ready, err = False, e
        else:
            err = None
        if not ready:
            known = self._known_models()
            raise ModuleError(
                f"detector: the {where} has no ready model {name!r}"
                + (f" version {version!r}" if version else "")
                + (f" (it has: {', '.join(known) or 'none'})" if known is not None else "")
                + (f": {_brief(err)}" if err else "")
            )
        md = self._json(self._client.get_model_metadata(name, version, **self._kw))
        ins, outs = md.get("inputs", []), md.get("outputs", [])
        inp = self._pick(ins, self._args.input_name, "input", name)
        if self._args.output_name is not None:
            self._pick(outs, self._args.output_name, "output", name)  # its error names the outputs
        if inp["datatype"] != "FP32":
            raise ModuleError(f"detector: model {name!r} input {inp['name']!r} is "
                              f"{inp['datatype']}; expected FP32")
        shape = [int(d) for d in inp["shape"]]
        self._batched = len(shape) == 4
        if not self._batched:  # a model without a batch axis (Triton max_batch_size 0)
            if len(shape) != 3:
                raise ModuleError(f"detector: model {name!r} input shape {shape}: expected 3 or 4 dims")
            shape = [1, *shape]
        self._in = inp["name"]
        self.layout, self.input_size, self.max_batch = parse_input_shape(
            shape, self._args.input_size, self._args.max_batch, f"model {name!r} input {self._in!r}"
        )
        # Output shapes as the formats read them: with a batch axis (a model without one gets 1).
        specs = [OutputSpec(o["name"], tuple(d if d > 0 else None for d in
                                             ([int(x) for x in o["shape"]] if self._batched
                                              else [1, *(int(x) for x in o["shape"])])))
                 for o in outs]
        a = self._args
        try:
            self.format = bind(a.output_format, specs, ModelMeta(), self.input_size,
                               FormatOptions(a.output_name, a.class_offset, a.detr_activation))
        except FormatError as e:
            raise ModuleError(f"detector: model {name!r}: {e}") from None
        self._outs = list(self.format.outputs)
        w, h = self.input_size
        self._item = (h, w, 3) if self.layout == "nhwc" else (3, h, w)
        self._item_bytes = 4 * 3 * w * h

    def _pick(self, items: list[dict], want: str | None, what: str, model: str) -> dict:
        names = [i["name"] for i in items]
        if want is not None:
            for i in items:
                if i["name"] == want:
                    return i
            raise ModuleError(f"detector: model {model!r} has no {what} {want!r} (it has {names})")
        if len(items) != 1:
            raise ModuleError(f"detector: model {model!r} has {what}s {names}: set {what}_name")
        return items[0]

    def _known_models(self) -> list[str] | None:
        try:
            index = self._client.get_model_repository_index(**self._kw)
        except Exception:  # MLServer and locked-down Tritons may not serve the index
            return None
        if not isinstance(index, list):
            index = self._json(index).get("models", [])
        return sorted({m.get("name", "?") for m in index})

    def _setup_memory(self, local: bool) -> None:
        mode = self._c.shared_memory
        nbytes = self.max_batch * self._item_bytes
        self.shared_memory = "none"
        if mode == "cuda":
            self._setup_cuda(nbytes)
        elif mode == "system" and "system_shared_memory" not in self.extensions:
            raise ModuleError(
                f"detector: the {self.server_name} server at {self.url} does not support system "
                "shared memory (no system_shared_memory extension; MLServer has none): "
                "set shared_memory: none or auto")
        elif mode == "system" or (mode == "auto" and local and "system_shared_memory" in self.extensions):
            try:
                self._setup_system(nbytes)
            except Exception as e:
                self._drop_system()
                if mode == "system":
                    raise ModuleError(
                        f"detector: the {self.server_name} server at {self.url} refused system "
                        f"shared memory ({_brief(e)}); it must run on this host and share /dev/shm, "
                        "and a server restricting the API needs its token in headers; else "
                        "set shared_memory: none"
                    ) from e
                self._log.info("detector: system shared memory refused (%s): sending tensors", _brief(e))
        if self._shm_handle is None:
            self._x = np.zeros((self.max_batch, *self._item), np.float32)

    def _setup_system(self, nbytes: int) -> None:
        import tritonclient.utils.shared_memory as shm

        self._region = f"edgeva_det_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._shm_handle = shm.create_shared_memory_region(self._region, "/" + self._region, nbytes,
                                                           create_only=True)
        self._client.register_system_shared_memory(self._region, "/" + self._region, nbytes, **self._kw)
        # The module writes its preprocessed images straight into the region through this view.
        self._x = shm.get_contents_as_numpy(self._shm_handle, np.float32, (self.max_batch, *self._item))
        self.shared_memory = "system"

    def _drop_system(self) -> None:
        self._x = None  # views on the region must go before it is unmapped (else: segfault)
        if self._shm_handle is None:
            return
        import tritonclient.utils.shared_memory as shm

        try:
            self._client.unregister_system_shared_memory(self._region, **self._kw)
        except Exception:  # the server may be gone or never registered it: nothing to undo
            pass
        shm.destroy_shared_memory_region(self._shm_handle)
        self._shm_handle = None

    def _setup_cuda(self, nbytes: int) -> None:
        try:
            import tritonclient.utils.cuda_shared_memory as cudashm
        except Exception as e:
            raise ModuleError(f"detector: shared_memory: cuda needs CUDA on this host: {e}") from e
        self._region = f"edgeva_det_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        dev = self._c.cuda_device
        try:
            self._cuda_handle = cudashm.create_shared_memory_region(self._region, nbytes, dev)
            self._client.register_cuda_shared_memory(
                self._region, cudashm.get_raw_handle(self._cuda_handle), dev, nbytes, **self._kw
            )
        except Exception as e:
            raise ModuleError(f"detector: CUDA shared memory on device {dev} failed ({_brief(e)}); "
                              "Jetson does not support it: use shared_memory: system") from e
        self.shared_memory = "cuda"

    # -- inference ---------------------------------------------------------------------------

    def input_buffer(self) -> np.ndarray:
        return self._x

    def infer(self, n: int) -> list[np.ndarray]:
        tc = self._tc
        shape = [n, *self._item] if self._batched else list(self._item)
        inp = tc.InferInput(self._in, shape, "FP32")
        if self.shared_memory == "system":
            inp.set_shared_memory(self._region, n * self._item_bytes)
        elif self.shared_memory == "cuda":
            import tritonclient.utils.cuda_shared_memory as cudashm

            cudashm.set_shared_memory_region(self._cuda_handle, [self._x[:n]])
            inp.set_shared_memory(self._region, n * self._item_bytes)
        elif self._grpc:
            inp.set_data_from_numpy(self._x[:n] if self._batched else self._x[0])
        else:
            inp.set_data_from_numpy(self._x[:n] if self._batched else self._x[0],
                                    binary_data=self._binary)
        wanted = [tc.InferRequestedOutput(o) if self._grpc else tc.InferRequestedOutput(o, binary_data=self._binary)
                  for o in self._outs]
        try:
            res = self._client.infer(self._c.model_name, [inp], model_version=self._c.model_version,
                                     outputs=wanted, **self._kw)
        except Exception as e:
            raise ModuleError(f"detector: inference on {self.url} failed: {_brief(e)}") from e
        ys = [res.as_numpy(o) for o in self._outs]
        missing = [o for o, y in zip(self._outs, ys, strict=True) if y is None]
        if missing:
            raise ModuleError(f"detector: the server returned no output {missing[0]!r}")
        fmt, thr = self.format, self.min_score
        if n == 1 or not self._batched:
            return [fmt.decode(ys, thr)]
        return [fmt.decode([y[i] for y in ys], thr) for i in range(n)]

    def close(self) -> None:
        self._drop_system()
        if self._cuda_handle is not None:
            import tritonclient.utils.cuda_shared_memory as cudashm

            try:
                self._client.unregister_cuda_shared_memory(self._region, **self._kw)
            except Exception:
                pass
            cudashm.destroy_shared_memory_region(self._cuda_handle)
            self._cuda_handle = None
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()
