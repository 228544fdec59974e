"""moepp_layer.py — a ctypes binding of moepp_layer.h, the C ABI of a layer library written by
`moeppc emit SPEC --emit lib -o LIB`, for NumPy arrays. Only the standard library and NumPy.

    lib = Library("LIB/libmoepp_layer.so")
    layer = Layer(lib, layer_index=3, tensors={name: array, ...}, n_threads=8, max_tokens=512)
    y, residual_out = layer.forward(x, residual_in)      # x: float32 [T, D]; residual_in: [T, E] or None
    layer.route_stats()                                   # the last call's picks
    layer.close()

Weights are NumPy arrays in the checkpoint's layout (SEMANTICS.md §6): float32 for f32, float16 for
f16, and uint16 holding the raw bits for bf16 (NumPy has no bfloat16). The library reads them in
place (the CPU build packs the GEMM matrices into its own copy at create), so the Layer keeps a
reference to every array it was given. Activations are float32, C-contiguous.

A CUDA build of the library (emit --target sm_XX, or emu for moeppc's CUDA emulator) takes device
memory: CudaDriver is a small ctypes binding of the CUDA driver API (libcuda.so.1, or the library
named by MOEPPC_CUDA_DRIVER) that holds device 0's primary context, the one the library runs in;
DeviceArray is device memory with a shape and dtype:

    gpu = CudaDriver()
    w = {name: gpu.to_device(a) for name, a in weights.items()}   # used in place (or give arrays: uploaded)
    layer = Layer(lib, 3, w, max_tokens=512, device=gpu)           # the workspace in device memory
    x, y, z = gpu.to_device(x_host), gpu.empty((T, D)), gpu.empty((T, E))
    stream = gpu.stream()
    layer.forward_async(x, None, y, z, stream)                     # enqueued, not waited for
    gpu.synchronize(stream); y_host = y.numpy(); layer.route_stats()
"""
import ctypes as C
import os

import numpy as np

ABI_VERSION = 1
DTYPE_F32, DTYPE_BF16, DTYPE_F16 = 0, 1, 2
MEMORY_HOST, MEMORY_DEVICE = 0, 1
BACKEND_CPU, BACKEND_CUDA = 0, 1
COPY_WEIGHTS = 1


class Tensor(C.Structure):
    _fields_ = [("name", C.c_char_p), ("data", C.c_void_p), ("dtype", C.c_int32), ("memory", C.c_int32),
                ("ndim", C.c_int32), ("reserved", C.c_int32), ("shape", C.c_int64 * 4)]


class LayerDesc(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("abi_version", C.c_uint32), ("layer_index", C.c_int64),
                ("tensors", C.POINTER(Tensor)), ("n_tensors", C.c_int64), ("n_threads", C.c_int32),
                ("flags", C.c_uint32)]


class RouteStats(C.Structure):
    _fields_ = [("n_tokens", C.c_int64), ("top_k", C.c_int64), ("n_experts", C.c_int64),
                ("picks_ffn", C.c_int64), ("picks_const", C.c_int64), ("picks_copy", C.c_int64),
                ("picks_zero", C.c_int64), ("picks_per_expert", C.POINTER(C.c_int64)),
                ("ids", C.POINTER(C.c_int32)), ("weights", C.POINTER(C.c_float))]


class LayerInfo(C.Structure):
    _fields_ = [("abi_version", C.c_uint32), ("backend", C.c_int32), ("spec_name", C.c_char * 64),
                ("isa", C.c_char * 16), ("moeppc_version", C.c_char * 16)] + \
               [(f, C.c_int64) for f in ("hidden", "n_experts", "n_ffn", "n_const", "n_copy", "n_zero", "top_k",
                                         "ffn_intermediate", "n_layers", "moe_every")] + \
               [("weight_dtype", C.c_int32), ("gating_residual", C.c_int32), ("n_tensors", C.c_int64)]


class TensorInfo(C.Structure):
    _fields_ = [("name", C.c_char * 160), ("dtype", C.c_int32), ("ndim", C.c_int32), ("shape", C.c_int64 * 4),
                ("required", C.c_int32), ("reserved", C.c_int32)]


class MoeppError(RuntimeError):
    """A call returned a status other than MOEPP_OK: .status, and the library's message."""

    def __init__(self, status, text, detail):
        super().__init__(f"{text}: {detail}")
        self.status = status


class NoDevice(RuntimeError):
    """No CUDA driver, or no device it can use."""


class CudaDriver:
    """The CUDA driver API through ctypes: device `ordinal`'s primary context (made current on this
    thread until close), device memory, streams. The library: MOEPPC_CUDA_DRIVER when set (moeppc's
    CUDA emulator), else libcuda.so.1. Raises NoDevice when there is no driver or device."""

    _SIGS = {
        "cuInit": [C.c_uint], "cuDeviceGet": [C.POINTER(C.c_int), C.c_int],
        "cuDevicePrimaryCtxRetain": [C.POINTER(C.c_void_p), C.c_int], "cuDevicePrimaryCtxRelease_v2": [C.c_int],
        "cuCtxPushCurrent_v2": [C.c_void_p], "cuCtxPopCurrent_v2": [C.POINTER(C.c_void_p)],
        "cuMemAlloc_v2": [C.POINTER(C.c_uint64), C.c_size_t], "cuMemFree_v2": [C.c_uint64],
        "cuMemcpyHtoD_v2": [C.c_uint64, C.c_void_p, C.c_size_t], "cuMemcpyDtoH_v2": [C.c_void_p, C.c_uint64, C.c_size_t],
        "cuStreamCreate": [C.POINTER(C.c_void_p), C.c_uint], "cuStreamSynchronize": [C.c_void_p],
        "cuStreamDestroy_v2": [C.c_void_p], "cuGetErrorString": [C.c_int, C.POINTER(C.c_char_p)],
    }

    def __init__(self, ordinal=0):
        path = os.environ.get("MOEPPC_CUDA_DRIVER") or "libcuda.so.1"
        try:
            self.lib = lib = C.CDLL(path)
        except OSError as e:
            raise NoDevice(f"no CUDA driver ({path}): {e}") from None
        for name, args in self._SIGS.items():
            fn = getattr(lib, name, None)
            if fn is None:
                raise NoDevice(f"{path} has no {name}: not a CUDA driver")
            fn.restype, fn.argtypes = C.c_int, args
        self._detail = getattr(lib, "moeppc_cudaemu_last_error", None)  # the emulator's own message
        if self._detail is not None:
            self._detail.restype, self._detail.argtypes = C.c_char_p, []
        self.ordinal, self._ctx, dev = ordinal, None, C.c_int()
        for call, args in (("cuInit", (0,)), ("cuDeviceGet", (C.byref(dev), ordinal))):
            rc = getattr(lib, call)(*args)
            if rc != 0:
                raise NoDevice(f"{call}: {self._message(rc)}")
        ctx = C.c_void_p()
        self.check(lib.cuDevicePrimaryCtxRetain(C.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        self.check(lib.cuCtxPushCurrent_v2(ctx), "cuCtxPushCurrent")
        self._ctx, self._dev = ctx, dev

    def _message(self, rc):
        s = C.c_char_p()
        text = s.value.decode() if self.lib.cuGetErrorString(rc, C.byref(s)) == 0 and s.value else f"error {rc}"
        detail = self._detail().decode() if self._detail is not None else ""
        return f"{text} ({rc}){': ' + detail if detail else ''}"

    def check(self, rc, what):
        if rc != 0:
            raise RuntimeError(f"CUDA driver: {what}: {self._message(rc)}")

    def alloc(self, nbytes):
        p = C.c_uint64()
        self.check(self.lib.cuMemAlloc_v2(C.byref(p), max(1, nbytes)), f"cuMemAlloc of {nbytes} bytes")
        return p.value

    def free(self, ptr):
        self.check(self.lib.cuMemFree_v2(ptr), "cuMemFree")

    def empty(self, shape, dtype=np.float32):
        """Uninitialised device memory for an array of this shape and dtype."""
        dt = np.dtype(dtype)
        return DeviceArray(self, self.alloc(int(np.prod(shape)) * dt.itemsize), shape, dt)

    def to_device(self, a):
        """A device copy of a NumPy array."""
        a = np.ascontiguousarray(a)
        d = self.empty(a.shape, a.dtype)
        self.check(self.lib.cuMemcpyHtoD_v2(d.ptr, a.ctypes.data, a.nbytes), "cuMemcpyHtoD")
        return d

    def download(self, ptr, shape, dtype):
        out = np.empty(shape, dtype)
        if out.nbytes:
            self.check(self.lib.cuMemcpyDtoH_v2(out.ctypes.data, ptr, out.nbytes), "cuMemcpyDtoH")
        return out

    def stream(self):
        """A non-blocking stream of its own (free with destroy_stream)."""
        s = C.c_void_p()
        self.check(self.lib.cuStreamCreate(C.byref(s), 1), "cuStreamCreate")  # CU_STREAM_NON_BLOCKING
        return s.value

    def synchronize(self, stream):
        self.check(self.lib.cuStreamSynchronize(stream), "cuStreamSynchronize (the work queued on the stream)")

    def destroy_stream(self, stream):
        self.check(self.lib.cuStreamDestroy_v2(stream), "cuStreamDestroy")

    def close(self):
        if self._ctx is not None:
            prev = C.c_void_p()
            self.lib.cuCtxPopCurrent_v2(C.byref(prev))
            self.lib.cuDevicePrimaryCtxRelease_v2(self._dev)
            self._ctx = None


class DeviceArray:
    """Device memory holding a C-contiguous array: .ptr, .shape, .dtype; .numpy() copies it back."""

    def __init__(self, driver, ptr, shape, dtype):
        self.driver, self.ptr, self.shape, self.dtype = driver, ptr, tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)

    def numpy(self):
        return self.driver.download(self.ptr, self.shape, self.dtype)

    def free(self):
        if self.ptr:
            self.driver.free(self.ptr)
            self.ptr = 0


_NUMPY_DTYPE = {np.dtype(np.float32): DTYPE_F32, np.dtype(np.uint16): DTYPE_BF16, np.dtype(np.float16): DTYPE_F16}


class Library:
    """The shared library (libmoepp_layer.so) and what it was built for."""

    def __init__(self, path):
        self.lib = lib = C.CDLL(path)
        sig = {
            "moepp_layer_create": (C.c_int, [C.POINTER(LayerDesc), C.POINTER(C.c_void_p)]),
            "moepp_layer_workspace_size": (C.c_size_t, [C.c_void_p, C.c_int64]),
            "moepp_layer_set_workspace": (C.c_int, [C.c_void_p, C.c_void_p, C.c_size_t]),
            "moepp_layer_max_tokens": (C.c_int64, [C.c_void_p]),
            "moepp_layer_forward": (C.c_int, [C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p,
                                              C.c_int64, C.c_void_p]),
            "moepp_layer_route_stats": (C.c_int, [C.c_void_p, C.POINTER(RouteStats)]),
            "moepp_layer_destroy": (None, [C.c_void_p]),
            "moepp_status_string": (C.c_char_p, [C.c_int]),
            "moepp_last_error": (C.c_char_p, []),
            "moepp_layer_get_info": (C.c_int, [C.POINTER(LayerInfo)]),
            "moepp_layer_tensor_info": (C.c_int, [C.c_int64, C.c_int64, C.POINTER(TensorInfo)]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        info = LayerInfo()
        self.check(lib.moepp_layer_get_info(C.byref(info)))
        if info.abi_version != ABI_VERSION:
            raise MoeppError(8, "MOEPP_ERR_VERSION", f"library ABI {info.abi_version}, binding {ABI_VERSION}")
        self.info = {f: getattr(info, f) for f, _ in LayerInfo._fields_}
        for f in ("spec_name", "isa", "moeppc_version"):
            self.info[f] = self.info[f].decode()

    def check(self, status):
        if status != 0:
            raise MoeppError(status, self.lib.moepp_status_string(status).decode(),
                             self.lib.moepp_last_error().decode())

    def tensor_info(self, layer_index):
        """[(name, dtype, shape, required)] of the tensors layer layer_index takes."""
        out, ti = [], TensorInfo()
        for i in range(self.info["n_tensors"]):
            self.check(self.lib.moepp_layer_tensor_info(layer_index, i, C.byref(ti)))
            out.append((ti.name.decode(), ti.dtype, tuple(ti.shape[:ti.ndim]), bool(ti.required)))
        return out


class Layer:
    """One MoE layer: its weights (a dict name -> array), threads, and a workspace for max_tokens."""

    def __init__(self, lib, layer_index, tensors, n_threads=1, max_tokens=512, copy_weights=False, device=None):
        """A CUDA build needs device (a CudaDriver): the workspace goes in its memory, and a weight
        may be a DeviceArray (used in place) as well as a NumPy array (uploaded at create)."""
        self.lib, self.info, self._handle, self.device, self._ws_dev = lib, lib.info, None, device, 0
        self._arrays = []
        if (lib.info["backend"] == BACKEND_CUDA) != (device is not None):
            raise ValueError("a CUDA build of the library needs device=CudaDriver(), a CPU build takes none")
        arr = (Tensor * max(1, len(tensors)))()
        for k, (name, a) in enumerate(tensors.items()):
            if a.dtype not in _NUMPY_DTYPE:
                raise TypeError(f"{name}: weights must be float32, float16 or uint16 (bf16 bits), not {a.dtype}")
            on_device = isinstance(a, DeviceArray)
            a = a if on_device else np.ascontiguousarray(a)
            self._arrays.append(a)
            arr[k].name, arr[k].data = name.encode(), a.ptr if on_device else a.ctypes.data
            arr[k].dtype, arr[k].ndim = _NUMPY_DTYPE[a.dtype], a.ndim
            arr[k].memory = MEMORY_DEVICE if on_device else MEMORY_HOST
            for d, n in enumerate(a.shape):
                arr[k].shape[d] = n
        desc = LayerDesc(C.sizeof(LayerDesc), ABI_VERSION, layer_index, arr, len(tensors), n_threads,
                         COPY_WEIGHTS if copy_weights else 0)
        handle = C.c_void_p()
        lib.check(lib.lib.moepp_layer_create(C.byref(desc), C.byref(handle)))
        self._handle = handle
        n = lib.lib.moepp_layer_workspace_size(handle, max_tokens)
        if device is not None:  # device memory, 256-byte aligned by the driver
            self._ws_dev = device.alloc(n)
            lib.check(lib.lib.moepp_layer_set_workspace(handle, self._ws_dev, n))
        else:
            self._ws = np.empty(n + 64, dtype=np.uint8)  # 64-byte aligned view of n bytes
            at = (-self._ws.ctypes.data) % 64
            lib.check(lib.lib.moepp_layer_set_workspace(handle, self._ws.ctypes.data + at, n))
        self.max_tokens = lib.lib.moepp_layer_max_tokens(handle)

    def forward_async(self, x, residual_in, y, residual_out, stream):
        """A CUDA build: y [T, D] and residual_out [T, E] (DeviceArrays, float32) for x [T, D] and
        residual_in [T, E] or None, enqueued on stream (CudaDriver.stream(); None: the legacy default
        stream) and not waited for. y may be x, residual_out residual_in (in place)."""
        T, D, E = x.shape[0], self.info["hidden"], self.info["n_experts"]
        for name, a, shape in (("x", x, (T, D)), ("residual_in", residual_in, (T, E)), ("y", y, (T, D)),
                               ("residual_out", residual_out, (T, E))):
            if a is not None and (not isinstance(a, DeviceArray) or a.dtype != np.float32 or a.shape != shape):
                raise ValueError(f"{name} must be a float32 DeviceArray of shape {list(shape)}")
        self.lib.check(self.lib.lib.moepp_layer_forward(
            self._handle, x.ptr, None if residual_in is None else residual_in.ptr, y.ptr,
            None if residual_out is None else residual_out.ptr, T, stream))

    def forward(self, x, residual_in=None, y=None, residual_out=None):
        """y [T, D] and the router logits [T, E] for x [T, D] (float32)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        T, D, E = x.shape[0], self.info["hidden"], self.info["n_experts"]
        if x.ndim != 2 or x.shape[1] != D:
            raise ValueError(f"x must be [T, {D}], found {list(x.shape)}")
        if residual_in is not None:
            residual_in = np.ascontiguousarray(residual_in, dtype=np.float32)
            if residual_in.shape != (T, E):
                raise ValueError(f"residual_in must be [{T}, {E}], found {list(residual_in.shape)}")
        y = np.empty((T, D), np.float32) if y is None else y
        residual_out = np.empty((T, E), np.float32) if residual_out is None else residual_out
        for name, a, shape in (("y", y, (T, D)), ("residual_out", residual_out, (T, E))):
            if a.dtype != np.float32 or a.shape != shape or not a.flags.c_contiguous:
                raise ValueError(f"{name} must be a C-contiguous float32 array of shape {list(shape)}")
        self.lib.check(self.lib.lib.moepp_layer_forward(
            self._handle, x.ctypes.data, None if residual_in is None else residual_in.ctypes.data,
            y.ctypes.data, residual_out.ctypes.data, T, None))
        return y, residual_out

    def route_stats(self):
        """The last call's routing: counts by kind of expert and per expert, and every pick (copies)."""
        s = RouteStats()
        self.lib.check(self.lib.lib.moepp_layer_route_stats(self._handle, C.byref(s)))
        out = {f: getattr(s, f) for f in ("n_tokens", "top_k", "picks_ffn", "picks_const", "picks_copy", "picks_zero")}
        n = s.n_tokens * s.top_k
        out["picks_per_expert"] = np.ctypeslib.as_array(s.picks_per_expert, (s.n_experts,)).copy()
        if n and self.device is not None:  # a CUDA build: ids and weights are device pointers
            addr = lambda p: C.cast(p, C.c_void_p).value  # noqa: E731
            out["ids"] = self.device.download(addr(s.ids), (s.n_tokens, s.top_k), np.int32)
            out["weights"] = self.device.download(addr(s.weights), (s.n_tokens, s.top_k), np.float32)
            return out
        out["ids"] = np.ctypeslib.as_array(s.ids, (n,)).reshape(s.n_tokens, s.top_k).copy() if n else None
        out["weights"] = np.ctypeslib.as_array(s.weights, (n,)).reshape(s.n_tokens, s.top_k).copy() if n else None
        return out

    def close(self):
        if self._handle:
            self.lib.lib.moepp_layer_destroy(self._handle)
            self._handle = None
        if self._ws_dev:
            self.device.free(self._ws_dev)
            self._ws_dev = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()
