"""Model sources: a torch.export program (.pt2), a `pkg.module:factory` entry point, an ONNX file, or
a local Hugging Face checkpoint folder (`hf:PATH`, see hf_source.py).

Loading never unpickles arbitrary objects by default: state dicts are read with
`torch.load(weights_only=True)` or safetensors, and a .pt2 archive whose payloads would be
unpickled is refused unless the recipe sets `model.trust_pickle = true`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import re
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import hf_source
from .errors import ModelSourceError
from .io import sha256_file

# "pkg.module:factory" (imported with the recipe's folder first on sys.path) or "path/to/file.py:factory"
FACTORY_RE = re.compile(r"^([A-Za-z_][\w.]*|[^:]+\.py):[A-Za-z_]\w*$")


@dataclass
class ModelSource:
    """A loaded model source. `module` is None for ONNX sources (export is skipped)."""

    kind: str  # "pt2" | "factory" | "onnx" | "hf"
    spec: str  # what the recipe named
    path: Path | None  # file for pt2/onnx; weights file for factories (may be None); folder for hf
    module: Any  # torch.nn.Module or None
    input_names: list[str]
    sha256: str | None


def is_factory(spec: str) -> bool:
    return bool(FACTORY_RE.match(spec)) and not spec.endswith((".pt2", ".onnx")) and not hf_source.is_hf(spec)


def load_source(spec: str, *, base: Path, weights: Path | None = None, trust_pickle: bool = False) -> ModelSource:
    """Load what `[model] source` names; relative paths are relative to `base` (the recipe's folder)."""
    if is_factory(spec):
        return _load_factory(spec, base=base, weights=weights)
    if hf_source.is_hf(spec):
        if weights is not None:
            raise ModelSourceError("model.weights: only used with a `pkg.module:factory` source")
        module, names = hf_source.load(spec, base)
        return ModelSource("hf", spec, hf_source.folder_of(spec, base), module, names, hf_source.identity(spec, base))
    path = (base / spec).resolve()
    if not path.is_file():
        raise ModelSourceError(f"model.source: file not found: {path}")
    if weights is not None:
        raise ModelSourceError("model.weights: only used with a `pkg.module:factory` source")
    if path.suffix == ".onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
            if not model.graph.node:
                raise ValueError("no graph")
            onnx.checker.check_model(str(path))
        except Exception as e:  # onnx raises DecodeError, ValidationError and others
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise ModelSourceError(f"model.source: {path} is not a valid ONNX model: {first}") from e
        init = {i.name for i in model.graph.initializer}
        names = [i.name for i in model.graph.input if i.name not in init]
        return ModelSource("onnx", spec, path, None, names, sha256_file(path))
    if path.suffix == ".pt2":
        return _load_pt2(spec, path, trust_pickle=trust_pickle)
    raise ModelSourceError(f"model.source: unsupported model file {path.name} (use .pt2, .onnx or pkg.module:factory)")


def _load_pt2(spec: str, path: Path, *, trust_pickle: bool) -> ModelSource:
    import torch

    if not trust_pickle:
        _refuse_pickled_payloads(path)
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise ModelSourceError(f"model.source: cannot load torch.export program {path}: {e}") from e
    from torch.export.graph_signature import InputKind

    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    module = program.module()
    try:
        module.eval()
    except Exception:  # some torch versions reject eval() on unlifted exported modules; they trace in eval mode
        pass
    return ModelSource("pt2", spec, path, module, names, sha256_file(path))


RAW_PAYLOAD_DIRS = ("/data/weights/", "/data/constants/")  # raw tensor bytes, described by *_config.json
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin")


def _refuse_pickled_payloads(path: Path) -> None:
    """Refuse .pt2 archives that torch.export.load would unpickle with weights_only=False.

    Every member that is not JSON/text metadata or a raw tensor payload declared as such must load
    with `torch.load(weights_only=True)`; older archive layouts (serialized_*.pt) fall under the
    same rule, because torch retries them with weights_only=False when the safe load fails.
    """
    import torch

    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ModelSourceError(f"model.source: {path} is not a torch.export archive: {e}") from e
    refuse = "set model.trust_pickle = true only for files you trust"
    with archive:
        raw: set[str] = set()
        for name in archive.namelist():
            if name.endswith("_config.json") and "/data/" in name:
                try:
                    config = json.loads(archive.read(name)).get("config", {})
                except (ValueError, AttributeError) as e:
                    raise ModelSourceError(f"model.source: {path}: unreadable {name}: {e}") from e
                folder = name.rsplit("/", 1)[0] + "/"
                for fqn, meta in config.items():
                    entry = str(meta.get("path_name", ""))
                    if meta.get("use_pickle") or not entry.startswith(("weight_", "tensor_")):
                        raise ModelSourceError(f"model.source: {path} holds a pickled payload ({fqn}); {refuse}")
                    raw.add(folder + entry)
        for name in archive.namelist():
            if name in raw or name.endswith("/") or name.endswith((".json", "archive_format", "archive_version", "byteorder", "version", "serialization_id")):
                continue
            if any(d in name for d in RAW_PAYLOAD_DIRS) and name not in raw:
                raise ModelSourceError(f"model.source: {path}: payload {name} is not declared as raw tensor data; {refuse}")
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception as e:
                raise ModelSourceError(
                    f"model.source: {path}: member {name} needs unpickling ({e.__class__.__name__}); {refuse}"
                ) from e


_FACTORY_LOCK = threading.Lock()  # loading a factory changes sys.path and sys.modules: one at a time


def _load_factory(spec: str, *, base: Path, weights: Path | None) -> ModelSource:
    """Import and call a factory (this runs the recipe's Python code); the modules it imported from
    its own folder are then forgotten (`_forget_imports`)."""
    module_name = spec.rsplit(":", 1)[0]
    folder = (base / module_name).resolve().parent if module_name.endswith(".py") else base.resolve()
    with _FACTORY_LOCK, _forget_imports(folder):
        return _build_from_factory(spec, base=base, weights=weights)


@contextlib.contextmanager
def _forget_imports(folder: Path) -> Iterator[None]:
    """Remove from sys.modules what was imported from `folder` (the user's model code) meanwhile, so
    that the process keeps no trace of it: another recipe's `model.py`, or this one edited, is
    imported afresh, and runs in one process (threads, workers) do not share module state.
    Installed libraries the code imported stay imported, even from a virtual environment inside
    `folder`, and so do new submodules of packages imported before (edgefair's, torch's)."""
    import site
    import sysconfig

    before = set(sys.modules)
    try:
        yield
    finally:
        installed = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values(), site.getusersitepackages()}
        installed |= set(site.getsitepackages()) if hasattr(site, "getsitepackages") else set()
        roots = [Path(p).resolve() for p in installed if p]
        for name in set(sys.modules) - before:
            if name.partition(".")[0] in before:
                continue
            places = _places(sys.modules.get(name))
            if any(_inside(p, folder) and not any(_inside(p, r) for r in roots) for p in places):
                sys.modules.pop(name, None)


def _places(module: Any) -> list[str]:
    """A module's file, or a package's folders (some extension modules fake `__path__`)."""
    attrs = getattr(module, "__dict__", {})  # never getattr: a lazy module (transformers) imports on a missing attribute
    places = [attrs.get("__file__")]
    path = attrs.get("__path__")
    if isinstance(path, (list, tuple)) or type(path).__name__ == "_NamespacePath":
        places += list(path)
    return [p for p in places if isinstance(p, str)]


def _inside(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


def _build_from_factory(spec: str, *, base: Path, weights: Path | None) -> ModelSource:
    import torch

    module_name, func_name = spec.rsplit(":", 1)
    try:
        mod = _import_file(base, module_name) if module_name.endswith(".py") else _import_module(base, module_name)
        factory = getattr(mod, func_name)
    except (ImportError, AttributeError, OSError, SyntaxError) as e:
        raise ModelSourceError(f"model.source: cannot import {spec}: {e}") from e
    try:
        model = factory()
    except Exception as e:
        raise ModelSourceError(f"model.source: factory {spec} failed: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise ModelSourceError(f"model.source: factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    digest = None
    if weights is not None:
        try:
            model.load_state_dict(_read_state_dict(weights))
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise ModelSourceError(f"model.weights: {weights} does not fit {spec}: {first}") from e
        digest = sha256_file(weights)
    model.eval()
    params = [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return ModelSource("factory", spec, weights, model, params, digest)


def _import_module(base: Path, name: str):
    with _on_path(base):
        return importlib.import_module(name)


def _import_file(base: Path, rel: str):
    """Import a model definition file by path; its own folder is importable while it loads."""
    import importlib.util

    path = (base / rel).resolve()
    if not path.is_file():
        raise ImportError(f"file not found: {path}")
    name = f"edgefair_model_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_path(path.parent):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


class _on_path:
    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def __enter__(self) -> None:
        self.added = self.folder not in sys.path
        if self.added:
            sys.path.insert(0, self.folder)

    def __exit__(self, *exc) -> None:
        if self.added:
            sys.path.remove(self.folder)


def _read_state_dict(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise ModelSourceError(f"model.weights: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except ImportError as e:
        raise ModelSourceError("model.weights: reading .safetensors needs the `safetensors` package") from e
    except Exception as e:
        raise ModelSourceError(f"model.weights: cannot read {path} safely (weights_only): {e}") from e
    if not isinstance(state, dict):
        raise ModelSourceError(f"model.weights: {path} does not hold a state dict")
    return state


def source_identity(spec: str, *, base: Path, weights: Path | None) -> tuple[str, str | None]:
    """(kind, content hash) of a source without loading it; the hash is None when the source is not
    fully described by files (a `pkg.module:factory` may import anything), so it is never cached.
    A `file.py:factory` is the file and its weights here; the local modules it imports are in
    `source_dependencies`."""
    if is_factory(spec):
        module = spec.rsplit(":", 1)[0]
        if not module.endswith(".py"):
            return "factory", None
        path = (base / module).resolve()
        parts = [sha256_file(path)] if path.is_file() else []
        if weights is not None and weights.is_file():
            parts.append(sha256_file(weights))
        return "factory", "+".join(parts) if parts else None
    if hf_source.is_hf(spec):
        return "hf", hf_source.identity(spec, base)
    path = (base / spec).resolve()
    kind = "onnx" if path.suffix == ".onnx" else "pt2"
    return kind, sha256_file(path) if path.is_file() else None


def source_dependencies(spec: str, *, base: Path) -> list[tuple[str, str]]:
    """(path relative to the factory's folder, sha256) of every local module a `path/file.py:factory`
    source imports, directly or through other local modules; [] for other sources.

    While the factory file loads, its folder comes first on sys.path, so an import that resolves to
    a module or package there is the user's code: editing it changes the model. Found by reading the
    import statements (and `importlib.import_module("literal")`), without running anything; an
    import that does not resolve in that folder is an installed library.
    """
    if not is_factory(spec) or not spec.rsplit(":", 1)[0].endswith(".py"):
        return []
    path = (base / spec.rsplit(":", 1)[0]).resolve()
    if not path.is_file():
        return []
    root = path.parent
    return [(p.relative_to(root).as_posix(), sha256_file(p)) for p in local_imports(path, root)]


def local_imports(path: Path, root: Path) -> list[Path]:
    """Files under `root` of the modules `path` imports, transitively, sorted; `path` excluded."""
    seen = {path}
    todo = [path]
    while todo:
        current = todo.pop()
        for name in _imported_names(current, root):
            for found in _module_files(root, name):
                if found not in seen:
                    seen.add(found)
                    todo.append(found)
    seen.discard(path)
    return sorted(seen)


def _imported_names(path: Path, root: Path) -> list[str]:
    """Absolute dotted names that `path` imports (for `from a import b`: `a` and `a.b`, since b may be
    a submodule). Relative imports resolve against the file's package under `root`."""
    import ast

    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return []  # importing it fails, and says so, when the source is loaded
    rel = path.relative_to(root).with_suffix("").parts
    package = list(rel[:-1])  # a package's __init__ is in the package it defines; a module in its folder's
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    continue
                prefix = package[: len(package) - (node.level - 1)]
                module = ".".join([*prefix, *(node.module.split(".") if node.module else [])])
            else:
                module = node.module or ""
            if module:
                names.append(module)
            names.extend(f"{module}.{a.name}" if module else a.name for a in node.names if a.name != "*")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            names.append(node.args[0].value)
    return names


def _module_files(root: Path, name: str) -> list[Path]:
    """The files under `root` that importing dotted `name` runs: each package's __init__.py on the
    way and the module itself, up to the first part that is not there (not a local module)."""
    files = []
    folder = root
    for part in name.split("."):
        if not part.isidentifier():
            break
        package, module = folder / part, folder / f"{part}.py"
        if (package / "__init__.py").is_file():  # Python's order: a package, then a module, then a namespace folder
            files.append(package / "__init__.py")
            folder = package
        elif module.is_file():
            files.append(module)
            break
        elif package.is_dir():
            folder = package
        else:
            break
    return files
