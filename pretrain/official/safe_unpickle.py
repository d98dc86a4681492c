"""Loading official training checkpoints (PyTorch Lightning `.ckpt`) without running anything
from them, omegaconf configs included, with or without omegaconf installed.

A pickle reaches Python callables only through `Unpickler.find_class` (GLOBAL, STACK_GLOBAL,
INST and the extension-registry opcodes all call it); REDUCE and NEWOBJ act only on what it
returned or on plain data. `SafeUnpickler.find_class` is the gate. It gives:
- the tensor-rebuild functions torch.save writes, torch dtypes, `torch.Size`, `torch.device`;
- plain builtin types, `collections.OrderedDict` / `defaultdict`, protocol 2's bytes re-encoding
  (`_codecs.encode`, latin-1 only);
- stand-ins for omegaconf's containers (DictConfig, ListConfig), their metadata and value nodes,
  for `typing.Any` and for pathlib paths (rebuilt as strings): a stand-in only records the state
  the pickle hands it; nothing of omegaconf is imported;
and refuses every other global with `RefusedGlobal`, naming it. BUILD, the one opcode that sets
attributes, is narrowed too: it fills a stand-in or the `_metadata` of a state-dict OrderedDict
and nothing else (pickle's own would setattr on any object, e.g. an allowed function's
`__defaults__`, changing it for the rest of the process); that needs pickle's Python
implementation (`pickle._Unpickler`, whose opcode table can be changed), fast enough for the
small object graph of a checkpoint (the tensors' bytes are separate records). Each load gets
fresh stand-in classes. `plain` then turns the stand-ins
into dicts, lists and values (as `OmegaConf.to_container` would, whole-value `${a.b}` / `${.x}`
interpolations resolved; resolver calls such as `${oc.env:X}` stay strings), and a class
reference (Lightning's `hparams_type`) into its dotted name.

It is handed to `torch.load(weights_only=False)` as `pickle_module`: torch subclasses
`Unpickler` to read the tensors' storages from the zip (its `persistent_load`) and answers
storage type names with its own inert `StorageType` before the gate; every other name reaches
`find_class` here. torch's own `weights_only=True` unpickler refuses omegaconf objects, and
`add_safe_globals` would need the real omegaconf classes (run with their `__setstate__`) or
process-wide registrations; this gate is local and fully ours. torch.load would pass a
TorchScript archive to torch.jit.load, so `load_checkpoint` refuses those before torch sees
the bytes.
"""
from __future__ import annotations

import _compat_pickle
import builtins
import collections
import importlib
import io
import pathlib
import pickle
import re
import zipfile

OMEGACONF = {   # dotted name -> what its pickled state holds
    "omegaconf.dictconfig.DictConfig": "dict", "omegaconf.listconfig.ListConfig": "list",
    "omegaconf.base.ContainerMetadata": "metadata", "omegaconf.base.Metadata": "metadata",
    **{f"omegaconf.nodes.{kind}Node": "node"
       for kind in ("Any", "String", "Integer", "Float", "Boolean", "Enum", "Bytes", "Path")},
}
TORCH_FUNCTIONS = ("torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
                   "torch._utils._rebuild_parameter", "torch.Size", "torch.device")
BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool", "bytes", "complex")
PATHS = ("Path", "PosixPath", "PurePath", "PurePosixPath", "WindowsPath", "PureWindowsPath")


class Refused(pickle.UnpicklingError):
    """The pickle asks for something this loader does not do."""


class RefusedGlobal(Refused):
    """The pickle names a global outside the allow-list; `name` is its dotted name."""

    def __init__(self, name: str):
        super().__init__(f"the file needs the Python global {name}, which is not plain data "
                         "(only tensors, plain containers and omegaconf configs are read, so that "
                         "nothing in the file runs)")
        self.name = name


class PickledObject:
    """Stand-in for an allowed class of a pickle: records the state BUILD hands it."""

    dotted_name = ""
    holds = ""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.dotted_name}: pickled state is a "
                                         f"{type(state).__name__}, not the attribute mapping of omegaconf 2.x")
        self.state = state


def _stand_in(dotted_name: str, holds: str) -> type:
    return type(dotted_name.rsplit(".", 1)[1], (PickledObject,), {"dotted_name": dotted_name, "holds": holds})


class PathAsString:
    """Stand-in for a pathlib class: `cls(*parts)` (how paths pickle) gives the path as a str."""

    dotted_name = ""

    def __new__(cls, *parts):
        flavour = pathlib.PureWindowsPath if "Windows" in cls.dotted_name else pathlib.PurePosixPath
        return str(flavour(*parts))


def _latin1_bytes(text, encoding="latin1"):
    """`_codecs.encode` as protocol 2 uses it for bytes, and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal(f"_codecs.encode (with {type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _allowed() -> dict:
    import torch

    table = {f"builtins.{name}": getattr(builtins, name) for name in BUILTINS}
    table.update({"collections.OrderedDict": collections.OrderedDict,
                  "collections.defaultdict": collections.defaultdict,
                  "_codecs.encode": _latin1_bytes,
                  "typing.Any": _stand_in("typing.Any", "type")})
    table.update({name: _stand_in(name, holds) for name, holds in OMEGACONF.items()})
    table.update({f"pathlib.{name}": type(name, (PathAsString,), {"dotted_name": f"pathlib.{name}"})
                  for name in PATHS})
    for name in TORCH_FUNCTIONS:
        module, attr = name.rsplit(".", 1)
        table[name] = getattr(importlib.import_module(module), attr)
    table.update({f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)})
    return table


class SafeUnpickler(pickle._Unpickler):
    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = _allowed()

    def find_class(self, module, name):
        # protocol 2 (torch.save's) writes Python 2 names: map them as pickle's own find_class does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        dotted = f"{module}.{name}"
        if dotted not in self._allowed:
            raise RefusedGlobal(dotted)
        return self._allowed[dotted]

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, PickledObject):
            inst.__setstate__(state)
        elif (type(inst) is collections.OrderedDict and isinstance(state, dict)
              and all(isinstance(key, str) for key in state)):
            vars(inst).update(state)                 # a module state_dict's `_metadata`
        else:
            raise Refused(f"the file sets attributes of a {type(inst).__name__} (pickle BUILD), which "
                          "only omegaconf objects and state-dict OrderedDicts have here")

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


Unpickler = SafeUnpickler       # the names torch.load uses of its pickle_module


def load(file, **kwargs):
    return SafeUnpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs):
    return load(io.BytesIO(data), **kwargs)


class NotACheckpoint(Exception):
    """The bytes are not a torch zip checkpoint, or are a TorchScript archive (code)."""


def load_checkpoint(path) -> object:
    """The checkpoint at `path` as plain data (tensors, dicts, lists, values).

    Only torch's zip format (torch.save since torch 1.6; what Lightning 1.8.6 writes) is read:
    the legacy tar format extracts members to disk, a path this loader has no need to open."""
    import sys

    import torch

    data = pathlib.Path(path).read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            records = {name.split("/", 1)[-1] for name in archive.namelist()}
    except zipfile.BadZipFile:
        raise NotACheckpoint("not a torch zip checkpoint (the format torch.save has written since "
                             "torch 1.6, and Lightning 1.8.6 with it)") from None
    if "constants.pkl" in records or any(name.startswith("code/") for name in records):
        raise NotACheckpoint("a TorchScript archive (model code), not a checkpoint of weights")
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False,
                        pickle_module=sys.modules[__name__])
    return plain(loaded)


# ---- stand-ins -> plain data --------------------------------------------------------------------

def plain(value, memo=None):
    """`value` with every stand-in replaced by dicts, lists and values (shared parts stay shared)."""
    memo = {} if memo is None else memo
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, type):
        return getattr(value, "dotted_name", "") or f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, PickledObject):
        memo[key] = None                         # a node holding itself reads as None
        out = memo[key] = _omegaconf_value(value, memo)
        if value.holds in ("dict", "list") and value.state.get("_parent") is None:
            resolve_interpolations(out)
        return out
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return _container(value, memo)
    return value


def _container(value, memo):
    if isinstance(value, dict):
        out = collections.OrderedDict() if isinstance(value, collections.OrderedDict) else {}
        memo[id(value)] = out
        for k, v in value.items():
            out[plain(k, memo)] = plain(v, memo)
        return out
    if isinstance(value, list):
        out = []
        memo[id(value)] = out
        out.extend(plain(v, memo) for v in value)
        return out
    return type(value)(plain(v, memo) for v in value)


def _omegaconf_value(obj: PickledObject, memo):
    state = getattr(obj, "state", {})
    if obj.holds == "node":
        return plain(state.get("_val"), memo)
    if obj.holds in ("dict", "list"):
        content = state.get("_content")
        if not isinstance(content, (dict, list)):
            return content                       # None, "???" (missing) or an interpolation
        return plain(content, memo)
    return None                                  # metadata alone holds no value


_INTERPOLATION = re.compile(r"\$\{(\.*)([\w\-]+(?:\.[\w\-]+)*)\}")


def resolve_interpolations(root, max_depth: int = 32) -> None:
    """Replace, in place, every value that is exactly `${path}` (absolute) or `${.path}`,
    `${..path}` (relative to its container) by the value at that path; others stay."""

    def lookup(segments):
        here = root
        for segment in segments:
            if isinstance(here, dict) and segment in here:
                here = here[segment]
            elif isinstance(here, list) and segment.isdigit() and int(segment) < len(here):
                here = here[int(segment)]
            else:
                raise KeyError(segment)
        return here

    def resolve(text, where, depth):
        match = _INTERPOLATION.fullmatch(text)
        if match is None or depth > max_depth:
            return text
        dots, path = match.groups()
        up = len(dots) - 1                       # ${.x}: x beside the value; each further dot one level up
        if up > len(where):
            return text
        target_where = (where[: len(where) - up] if dots else []) + path.split(".")
        try:
            target = lookup(target_where)
        except KeyError:
            return text
        if isinstance(target, str):
            return resolve(target, target_where[:-1], depth + 1)
        return target

    def visit(container, where):
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for k, v in list(items):
            if isinstance(v, str):
                container[k] = resolve(v, where, 0)
            elif isinstance(v, (dict, list)):
                visit(v, where + [str(k)])

    if isinstance(root, (dict, list)):
        visit(root, [])
