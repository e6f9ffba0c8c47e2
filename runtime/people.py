"""Who an export can render: the base model, a merged person, or the adapter files of a people folder.

`PeopleStore` resolves a person name to a `Person` (the graph feeds of their adapter, their anchors and the
identity that keys the plane cache). Adapter files are parsed once per file version (path, inode, size, mtime)
and kept in an LRU, so a replaced file is read again; files are checked with formats.adapter_file and against
the export (base model, policy, target list, input shapes).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from formats.adapter_file import AdapterData, lora_fc_after_gain, read_adapter
from formats.atomic import copy_file
from formats.errors import AdapterFileError, FormatError
from formats.export_manifest import ExportManifest, keep_lora_adapter_format
from formats.names import is_valid_name
from formats.limits import Limits, current_limits
from formats.tensors import read_safetensors
from runtime.cache import LRUCache
from runtime.errors import AdapterInvalid, ExportInvalid, InvalidRequest, UnknownPerson
from runtime.native_adapters import (GraphFeeds, base_feeds, numpy_feeds, person_feeds, remove_native_adapters,
                                     write_native_adapters)
from runtime.requests import Anchor

GRAPHS = ("synthesis", "render")


@dataclass
class Person:
    """A resolved person: graph feeds of their adapter, their anchors, and the identity that keys the plane cache."""

    name: str | None
    """None: the base model."""
    identity: str
    """'base', 'merged:<adapter sha256>' or 'adapter:<adapter sha256>'."""
    feeds: dict[str, GraphFeeds]
    """Adapter inputs per graph ('synthesis', 'render'): numpy arrays and, where the export and the people folder
    allow, the person's native onnxruntime adapter (runtime.native_adapters); empty for merged and adapter-free
    exports."""
    anchor_ws: np.ndarray | None = None
    """[K, num_ws, w_dim] float32 W+ anchors, or None."""
    anchor_c: np.ndarray | None = None
    """[K, 25] camera labels of the anchors."""
    anchor_names: list[str] = field(default_factory=list)

    def anchor_latent(self, ref: Anchor, field_name: str = "anchor") -> np.ndarray:
        """W+ [num_ws, w_dim] of anchor `ref` (a name, an index, or a string of digits)."""
        return self.anchor_ws[self.anchor_index(ref, field_name)]

    def anchor_camera(self, ref: Anchor, field_name: str = "anchor") -> np.ndarray:
        """The camera label [25] of anchor `ref`'s photo."""
        return self.anchor_c[self.anchor_index(ref, field_name)]

    def anchor_index(self, ref: Anchor, field_name: str = "anchor") -> int:
        """Index of anchor `ref` (a name, an index, or a string of digits); InvalidRequest naming the field."""
        if self.anchor_ws is None:
            who = "the base model" if self.name is None else f"{self.name!r}"
            raise InvalidRequest(field_name, f"{who} has no anchors: pass a latent instead")
        if isinstance(ref, int) or is_index(ref):
            i = int(ref)
            if not 0 <= i < len(self.anchor_names):
                raise InvalidRequest(field_name, f"anchor index {i} out of range 0..{len(self.anchor_names) - 1}")
        else:
            if ref not in self.anchor_names:
                raise InvalidRequest(field_name, f"unknown anchor {ref!r}; {self.name!r} has: "
                                                 f"{', '.join(self.anchor_names[:20])}")
            i = self.anchor_names.index(ref)
        return i


def is_index(text: str) -> bool:
    """True for a string of ASCII digits: what `int()` reads as an anchor index. (`str.isdigit()` also accepts
    superscripts and other digits `int()` refuses, so it must not decide.)"""
    return text.isascii() and text.isdecimal()


def file_stamp(path: Path) -> tuple:
    """What identifies a file's current version cheaply (for cache keys): path, inode, size, mtime."""
    st = path.stat()
    return str(path), st.st_ino, st.st_size, st.st_mtime_ns


class PeopleStore:
    """The people of one export (see the module docstring). Thread-safe: the LRU has its own lock."""

    def __init__(self, manifest: ExportManifest, people_dir: str | os.PathLike | None, cache_size: int = 16,
                 on_load: Callable[[], None] | None = None, limits: Limits | None = None):
        self.manifest = manifest
        self.limits = current_limits(limits)
        """What an adapter file may hold (anchors, sizes): formats.limits.Limits."""
        self.mode = manifest.mode
        self.people_dir = Path(people_dir) if people_dir is not None else None
        if self.people_dir is not None and not self.people_dir.is_dir():
            raise InvalidRequest("people_dir", f"{self.people_dir} is not a directory")
        self._inputs = {g: manifest.adapter_inputs(g) for g in GRAPHS}
        self._adapters = LRUCache(cache_size)
        self._on_load = on_load or (lambda: None)
        self.base = self._base_person()

    # ------------------------------------------------------------------ listing and lookup

    def names(self) -> list[str]:
        """Servable people: adapter files <name>.safetensors in people_dir (keep-lora), the merged person, or []."""
        if self.mode == "merged":
            return [self.manifest.merged_person]
        if self.mode == "none" or self.people_dir is None:
            return []
        return sorted(p.stem for p in self.people_dir.glob("*.safetensors") if is_valid_name(p.stem) and p.is_file())

    def get(self, person: str | None) -> Person:
        """The Person to render (None: the base model); UnknownPerson when this export cannot render them."""
        merged = self.manifest.merged_person
        if person is None:
            if merged is not None:
                raise UnknownPerson(None, f"this export has {merged!r} merged into its weights: only {merged!r} can "
                                          f"be rendered, not the base model")
            return self.base
        if self.mode == "none":
            raise UnknownPerson(person, f"unknown person {person!r}: this export has no adapters (only the base "
                                        f"model, person=None); export with --keep-lora to serve people")
        if merged is not None:
            if person != merged:
                raise UnknownPerson(person, f"unknown person {person!r}: this export serves only {merged!r} "
                                            f"(merged into its weights)")
            return self.base
        return self._entry(person)[1]

    def info(self, name: str) -> dict[str, Any]:
        """Anchors (names), rank, alpha, layout, fingerprint (sha256 of the adapter file), base fingerprint."""
        p = self.get(name)
        if self.mode == "merged":
            a = self.manifest.adapter
            pol = a.get("policy", {})
            return {"name": name, "anchors": list(p.anchor_names), "rank": pol.get("rank"), "alpha": pol.get("alpha"),
                    "layout": pol.get("layout"), "fingerprint": a["adapter_sha256"],
                    "base_fingerprint": self.manifest.base_fingerprint, "mode": "merged"}
        data, person = self._entry(name)
        return {"name": name, "anchors": list(data.anchor_names), "rank": data.meta["rank"],
                "alpha": data.meta["alpha"], "layout": data.meta["layout"], "fingerprint": data.sha256,
                "base_fingerprint": data.meta["base_fingerprint"], "dtype": data.meta.get("dtype"),
                "parameters": data.num_parameters, "file_bytes": data.file_bytes, "mode": "keep-lora",
                "native_adapter": {g: f.native for g, f in person.feeds.items()},
                "native_adapter_why_not": {g: f.why_numpy for g, f in person.feeds.items() if f.why_numpy}}

    # ------------------------------------------------------------------ changes

    def add(self, name: str, adapter_path: str | os.PathLike) -> list[Path]:
        """Check an adapter file against this export, then copy it to people_dir/<name>.safetensors atomically and
        write the person's native onnxruntime adapter files (runtime.native_adapters) where the export takes them.
        The one route by which a person is added (`Runtime.add_person`, `cli.py people add`); returns the files
        written: the adapter file, then its native adapter files."""
        if self.mode != "keep-lora":
            raise InvalidRequest("name", f"this export is {self.mode!r}: people can only be added to a keep-LoRA "
                                         f"export (re-export with --keep-lora)")
        if self.people_dir is None:
            raise InvalidRequest("people_dir", "this runtime was created without a people_dir")
        data = self._read(adapter_path)
        self._check(data)
        written = [copy_file(adapter_path, self.people_dir / f"{name}.safetensors")]
        if self.manifest.adapter_defaults_in_graph:
            written += write_native_adapters(self.people_dir, name, data.sha256, data.tensors, self._inputs)
        else:
            remove_native_adapters(self.people_dir, name)
        self.forget(name)
        return written

    def remove(self, name: str) -> None:
        """Delete people_dir/<name>.safetensors (UnknownPerson when there is none)."""
        path = self.people_dir / f"{name}.safetensors" if self.people_dir is not None else None
        if path is None or not path.is_file():
            raise UnknownPerson(name, f"unknown person {name!r}: no {name}.safetensors in the people directory")
        path.unlink()
        remove_native_adapters(self.people_dir, name)
        self.forget(name)

    def forget(self, name: str) -> None:
        """Drop the cached adapter of `name`."""
        if self.people_dir is not None:
            path = str(self.people_dir / f"{name}.safetensors")
            self._adapters.discard(lambda k: k[0] == path)

    def clear(self) -> None:
        self._adapters.clear()

    def cache_stats(self) -> dict[str, int]:
        return self._adapters.stats()

    # ------------------------------------------------------------------ internals

    def _read(self, path: str | os.PathLike, person: str | None = None) -> AdapterData:
        """The checked adapter file; any fault of the file is AdapterInvalid (never a bare TypeError / KeyError),
        and a person's file that disappeared while being read is UnknownPerson."""
        try:
            return read_adapter(path, self.manifest.w_dim, self.manifest.num_ws, self.limits)
        except AdapterFileError as e:
            if person is not None and not Path(path).exists():
                raise UnknownPerson(person, f"unknown person {person!r}: removed while being read") from None
            raise AdapterInvalid.of(e) from None
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as e:
            raise AdapterInvalid(str(path), f"malformed adapter file ({type(e).__name__}: {e})") from None

    def _entry(self, name: str) -> tuple[AdapterData, Person]:
        """The parsed adapter file of `name` and its Person: one LRU entry per file version."""
        if self.mode != "keep-lora":
            raise UnknownPerson(name, f"unknown person {name!r}")
        if self.people_dir is None:
            raise UnknownPerson(name, f"unknown person {name!r}: this runtime has no people directory")
        path = self.people_dir / f"{name}.safetensors"
        try:
            stamp = file_stamp(path)
        except FileNotFoundError:
            raise UnknownPerson(name, f"unknown person {name!r}: no {name}.safetensors in {self.people_dir}") from None
        entry = self._adapters.get(stamp)
        if entry is None:
            data = self._read(path, name)
            self._check(data)
            self._on_load()
            if self.manifest.adapter_defaults_in_graph:
                feeds = {g: person_feeds(self.people_dir, name, data.sha256, g, self._inputs[g], data.tensors)
                         for g in GRAPHS}
            else:
                feeds = {g: numpy_feeds(self._inputs[g], data.tensors, "export without default adapter values "
                                        "(manifest format 1): native adapters need a re-export")
                         for g in GRAPHS}
            entry = (data, Person(name, f"adapter:{data.sha256}", feeds, self._w_plus(data.anchor_ws),
                                  data.anchor_c, list(data.anchor_names)))
            self._adapters.put(stamp, entry)
        return entry

    def _check(self, data: AdapterData) -> None:
        """A keep-LoRA export serves adapters of its base model and its exact policy (hence tensor set and shapes)."""
        where, exp = str(data.path), self.manifest.adapter
        if data.meta["base_fingerprint"] != self.manifest.base_fingerprint:
            raise AdapterInvalid(where, f"made for a different base model (adapter base "
                                        f"{data.meta['base_fingerprint'][:19]}..., export base "
                                        f"{self.manifest.base_fingerprint[:19]}...)")
        if self.mode != "keep-lora":
            return
        mine, theirs = exp["policy"], data.meta["policy"]
        diffs = [f"{k}={theirs.get(k)!r} (export: {mine.get(k)!r})" for k in sorted(set(mine) | set(theirs))
                 if theirs.get(k) != mine.get(k)]
        if diffs:
            raise AdapterInvalid(where, "its adapter policy differs from this keep-LoRA export's: " + ", ".join(diffs)
                                 + "; re-export with --keep-lora --adapter <a file of this policy>")
        theirs_after = lora_fc_after_gain(data.meta["format_version"])
        if theirs_after != lora_fc_after_gain(keep_lora_adapter_format(exp)):
            raise AdapterInvalid(where, f"it is an adapter of format version {data.meta['format_version']}, whose "
                                        f"fully connected LoRA deltas act {'after' if theirs_after else 'before'} the "
                                        f"layer gain, and this export's graphs compute the other rule (format "
                                        f"{keep_lora_adapter_format(exp)}); re-export with --keep-lora --adapter "
                                        f"{where}, or export it merged")
        if [list(t) for t in data.meta["targets"]] != exp["targets"]:
            raise AdapterInvalid(where, f"its target list ({len(data.meta['targets'])} tensors) differs from this "
                                        f"export's ({len(exp['targets'])})")
        for i in exp["inputs"]:
            t = data.tensors.get(i["tensor"])
            if t is None or list(t.shape) != i["shape"]:
                raise AdapterInvalid(where, f"tensor '{i['tensor']}' has shape "
                                            f"{None if t is None else list(t.shape)}, the export expects {i['shape']}")

    def _base_person(self) -> Person:
        """The base model (keep-LoRA: the base values of every adapter input), or the merged person."""
        a, directory = self.manifest.adapter, self.manifest.directory
        empty = {g: GraphFeeds() for g in GRAPHS}
        if self.mode == "none":
            return Person(None, "base", empty)
        if self.mode == "merged":
            ws = c = None
            names: list[str] = []
            if a.get("anchors_file"):
                path = directory / a["anchors_file"]
                try:
                    meta, t, _ = read_safetensors(path, ExportInvalid, self.limits)
                    ws, c = t["anchors.ws"].astype(np.float32), t["anchors.c"].astype(np.float32)
                    names = json.loads(meta.get("names", "[]"))
                    if not (isinstance(names, list) and len(names) == len(ws) and c.shape == (len(ws), 25)
                            and all(isinstance(n, str) for n in names)):
                        raise ValueError("anchor names, latents and cameras do not match")
                    if not (np.isfinite(ws).all() and np.isfinite(c).all()):
                        raise ValueError("non-finite anchors")
                except (KeyError, ValueError, TypeError, FormatError) as e:
                    raise ExportInvalid(str(path), f"the merged person's anchors cannot be read ({e})") from None
            return Person(a["person"], f"merged:{a['adapter_sha256']}", empty, self._w_plus(ws), c, names)
        path = directory / a["base_values_file"]
        try:
            _, t, _ = read_safetensors(path, ExportInvalid, self.limits)
        except FormatError as e:
            raise ExportInvalid(str(path), f"the base values of the adapter inputs cannot be read ({e})") from None
        missing = [i["input"] for i in a["inputs"] if i["input"] not in t]
        if missing:
            raise ExportInvalid(str(path), f"missing base values for {missing[:5]}")
        by_tensor = {i["tensor"]: t[i["input"]] for i in a["inputs"]}
        defaults = self.manifest.adapter_defaults_in_graph
        return Person(None, "base", {g: base_feeds(self._inputs[g], by_tensor, defaults) for g in GRAPHS})

    def _w_plus(self, ws: np.ndarray | None) -> np.ndarray | None:
        """Anchors [K, w_dim] -> [K, num_ws, w_dim]; W+ anchors are returned as they are."""
        if ws is None:
            return None
        ws = np.asarray(ws, dtype=np.float32)
        return np.repeat(ws[:, None, :], self.manifest.num_ws, axis=1) if ws.ndim == 2 else ws
