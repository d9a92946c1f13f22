"""What every entry point shares: environment defaults, strict keys, one-line user errors.

Each ``@hydra.main`` task function (``build_dataset.py``, ``train.py``,
``run_experiment.py``, ``python -m elis.main``, ``serve.py``) calls::

    prepare_environment()          # at import, before torch/transformers are imported
    ...
    return run_entry(task, cfg)    # inside the Hydra task function

- ``prepare_environment()`` sets the defaults the Makefile exports, in the code, so that
  ``python train.py ...`` behaves like ``make``: ``TOKENIZERS_PARALLELISM=false``,
  ``WANDB_MODE=offline``, and, when the Hugging Face hub does not answer within
  ``HUB_PROBE_TIMEOUT_S`` (or ``HF_HUB_OFFLINE`` is already set), ``HF_HUB_OFFLINE=1`` /
  ``TRANSFORMERS_OFFLINE=1`` so a model that is not available locally fails at once instead
  of after a minute of retries. Variables the user set are never overridden.
- ``check_overrides(cfg, overrides)`` rejects ``+group.key=value`` additions whose key no
  option of that config group defines (``+sched.aging_factr=0.5``), listing the valid keys;
  ``key=value`` typos are already rejected by Hydra's struct mode.
- ``run_entry(task, cfg)`` turns a user error (``UserError``, ``ValueError``,
  ``FileNotFoundError``, ``KeyError``, OmegaConf errors, Hydra instantiation errors) into one
  line on stderr and exit code 2, and writes ``FAILED.txt`` (error + traceback) into the run
  folder. ``HYDRA_FULL_ERROR=1`` re-raises with the traceback instead.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from elis.config import CONFIG_DIR

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"
HUB_PROBE_TIMEOUT_S = 1.5
EXIT_USER_ERROR = 2
# Config groups whose files put keys at the top level (checked against the primary config).
GLOBAL_GROUPS = ("preset", "hydra")


class UserError(Exception):
    """A mistake in the user's input (config value, missing file, empty run); one-line message."""


# ---------------------------------------------------------------------- environment
def hub_reachable(host: str = HUB_HOST, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``host:443`` opens within ``timeout_s`` (DNS included)."""
    import socket

    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
    return bool(result and result[0])


def prepare_environment(probe: Callable[[], bool] = hub_reachable) -> dict[str, str]:
    """Set offline/quiet defaults for variables the user has not set; returns what it set."""
    set_now: dict[str, str] = {}

    def default(name: str, value: str) -> None:
        if name not in os.environ:
            os.environ[name] = value
            set_now[name] = value

    default("TOKENIZERS_PARALLELISM", "false")
    if not getattr(sys.stderr, "isatty", lambda: False)():
        # redirected output: no \r progress bars from datasets / transformers / the hub
        default("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        default("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        default("TQDM_DISABLE", "1")  # raw tqdm bars of libraries (e.g. transformers' GGUF loading)
    default("WANDB_MODE", "offline")
    if "HF_HUB_OFFLINE" in os.environ:
        default("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
    elif not probe():
        default("HF_HUB_OFFLINE", "1")
        default("TRANSFORMERS_OFFLINE", "1")
    quiet_third_party()
    return set_now


def quiet_third_party() -> None:
    """Silence adverts and known harmless warnings of libraries (never our own messages)."""
    # Lightning's "💡 Tip: ... litmodels" advert and its "GPU available: ..." banner lines.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*litmodels.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*")


def offline() -> bool:
    """True when the Hugging Face hub must not be contacted."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def model_unavailable(field: str, name: str, err: BaseException, hint: str = "") -> UserError:
    """A one-line error for a model ``name`` (config ``field``) that could not be loaded."""
    if offline() or isinstance(err, OSError) and "connect" in str(err).lower():
        how = ("it is not available locally and the Hugging Face hub is offline (HF_HUB_OFFLINE=1 "
               "or unreachable): download it once with network access (HF_HUB_OFFLINE=0), or set "
               f"{field}=/path/to/a/local/model/folder")
    else:
        how = f"{err.__class__.__name__}: {' '.join(str(err).split())[:300]}"
    return UserError(f"{field}={name!r} could not be loaded: {how}{'; ' + hint if hint else ''}")


def ensure_model_available(field: str, name: str, hint: str = "") -> None:
    """Fail at once, offline, for a hub model that is neither a local folder nor in the HF cache.

    Raises:
        UserError: naming ``field`` and how to get the model (online once, or a local folder).
    """
    if os.path.isdir(name) or not offline():
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    raise model_unavailable(field, name, OSError(f"{name} is not in the Hugging Face cache"), hint)


# ---------------------------------------------------------------------- strict keys
def _merge_schema(into: dict, node: Any) -> None:
    """Union of key trees: dict nodes merge; a non-dict value marks an open leaf (None)."""
    if not isinstance(node, dict):
        return
    for k, v in node.items():
        if k == "defaults":
            continue
        if isinstance(v, dict):
            if k in into and into[k] is None:
                continue  # an open leaf in another option stays open
            _merge_schema(into.setdefault(k, {}), v)
        else:
            into[k] = None


def config_schema(config_name: str, config_dir: Path = CONFIG_DIR) -> dict:
    """Key tree of ``config_name``: its own keys + the union of every option of every group."""
    import yaml

    schema: dict = {}
    _merge_schema(schema, yaml.safe_load((config_dir / f"{config_name}.yaml").read_text()) or {})
    for gdir in sorted(p for p in config_dir.iterdir() if p.is_dir()):
        target = schema if gdir.name in GLOBAL_GROUPS else schema.setdefault(gdir.name, {})
        if not isinstance(target, dict):
            target = schema[gdir.name] = {}
        for f in sorted(gdir.glob("*.yaml")):
            _merge_schema(target, yaml.safe_load(f.read_text()) or {})
    return schema


def check_overrides(overrides: Iterable[str], config_name: str, config_dir: Path = CONFIG_DIR) -> None:
    """Reject ``+a.b=v`` additions whose key no file of the config defines.

    A key is known when it appears in the primary config or in any option of its group (a key
    of a sibling option is accepted: the code may read it). Below a key whose value is not a
    mapping (e.g. ``wandb: null``) anything may be added. ``++key=v`` forces an addition.

    Raises:
        UserError: naming the key, the override, a close match and the valid keys.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    groups = {p.name for p in config_dir.iterdir() if p.is_dir()}
    adds = [o for o in OverridesParser.create().parse_overrides(list(overrides))
            if o.type == OverrideType.ADD and "/" not in o.key_or_group and o.key_or_group not in groups]
    if not adds:
        return
    schema = config_schema(config_name, config_dir)
    for o in adds:
        problem = unknown_key_message(schema, o.key_or_group)
        if problem:
            raise UserError(f"{problem} (from override {o.input_line!r})")


def unknown_key_message(schema: dict, key: str) -> str | None:
    """None when ``key`` (dotted) is known to ``schema``, else a message naming the valid keys."""
    node: Any = schema
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            return None  # below an open leaf
        if part not in node:
            parent = ".".join(parts[:i]) or "the top level"
            valid = sorted(node)
            close = difflib.get_close_matches(part, valid, n=1)
            hint = f"; did you mean {'.'.join([*parts[:i], close[0]])}?" if close else ";"
            return f"unknown config key {key!r}{hint} valid keys of {parent}: {', '.join(valid)}"
        node = node[part]
    return None


def precheck(config_name: str, argv: list[str] | None = None, config_dir: Path = CONFIG_DIR) -> None:
    """Compose ``config_name`` with the command line's overrides before Hydra starts the job.

    A bad override (unknown key, ``+`` typo, missing group option, bad syntax) then ends with
    one line ``error: ...`` and exit code 2, and no run folder is created. Skipped for
    command lines with flags (``-m``, ``--cfg``, ``--help``: Hydra handles them) and when
    ``HYDRA_FULL_ERROR=1`` (Hydra shows the traceback).
    """
    import re

    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = sys.argv[1:] if argv is None else list(argv)
    if any(a.startswith("-") for a in args) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    overrides = [a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            compose(config_name=config_name, overrides=overrides)
        check_overrides(overrides, config_name, config_dir)
    except (HydraException, OmegaConfBaseException, UserError) as err:
        msg = one_line(err)
        m = re.search(r"Could not override '([^']+)'", msg)
        if m:
            msg = unknown_key_message(config_schema(config_name, config_dir), m.group(1)) or msg
        print(f"error: {msg}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None


def task_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job ([] outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


# ---------------------------------------------------------------------- errors
def user_error_types() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (UserError, ValueError, FileNotFoundError, KeyError, OmegaConfBaseException,
            HydraException)


def one_line(err: BaseException) -> str:
    """The error's message on one line (causes of Hydra's instantiation errors unwrapped)."""
    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    msg = " ".join(str(msg).split()).split(" Config search path:")[0]
    ours = isinstance(err, (UserError, ValueError, KeyError)) or (
        isinstance(err, FileNotFoundError) and len(err.args) == 1)
    return msg if ours and msg else f"{err.__class__.__name__}: {msg}"


def write_failed(out_dir: str | Path | None, err: BaseException) -> Path | None:
    """Write ``FAILED.txt`` (one-line reason, then the traceback) into the run folder."""
    if not out_dir:
        return None
    p = Path(out_dir)
    if not p.is_dir():
        return None
    path = p / "FAILED.txt"
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    path.write_text(f"FAILED: {one_line(err)}\n\n{tb}")
    return path


def _output_dir(cfg) -> str | None:
    try:
        return str(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - no run folder resolvable (outside Hydra)
        return None


def run_entry(task: Callable[[Any], Any], cfg, config_name: str | None = None) -> Any:
    """Run ``task(cfg)`` as an entry point: strict keys, one-line user errors, FAILED.txt.

    Exits with code 2 and one line ``error: ...`` on stderr for a user error; other
    exceptions propagate (Hydra prints them) after ``FAILED.txt`` is written.
    """
    out = _output_dir(cfg)
    try:
        if config_name:
            check_overrides(task_overrides(), config_name)
        return task(cfg)
    except user_error_types() as err:
        failed = write_failed(out, err)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        where = f" [details: {failed}]" if failed else ""
        print(f"error: {one_line(err)}{where}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
    except Exception as err:
        write_failed(out, err)
        raise
