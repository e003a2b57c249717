"""Sandbox templates: the named shapes a deployment offers (SANDBOX_TEMPLATES_FILE).

Each template has its own image (or pod template, Docker image, local command
arguments), resources with the most a session may ask for, env, and warm pool policy.
The first template marked ``default: true`` (else the first listed) is the default.
Without a file there is one template, ``default``, made of today's settings, so every
existing configuration keeps working unchanged.

A file is a YAML list of templates, or a mapping with the list under ``templates``::

    - name: python
      default: true
      image: registry.example/python-sandbox:1     # Kubernetes (the pod template's
      podTemplate: /etc/agent-sandbox/python.yaml  #   first container), optional
      dockerImage: agent-sandbox/devsandbox:dev    # Docker
      localArgs: []                                # local: extra devsandbox arguments
      resources: {cpu: 500m, memory: 1Gi}          # its pods' own
      maxResources: {cpu: "2", memory: 4Gi}        # the most a session may ask
      env: {LANG: C.UTF-8}
      prewarm: {policy: static, size: 2}           # or {policy: adaptive, min: 1, max: 20}

``resolve_shape`` checks what a POST /sessions asks (the template, its resources)
against the templates: 422 ``unknown_template`` or ``resources_out_of_bounds``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ResourcesOutOfBounds, UnknownTemplate
from .model import (
    DEFAULT_TEMPLATE,
    Limits,
    PrewarmPolicy,
    PrewarmSettings,
    Resources,
    Shape,
    TemplateLimits,
)
from .quantities import cpu_millis, memory_bytes

# A template's name is a label value and a metric label: a DNS label.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# The file's keys as DESIGN names them (snake_case); the chart's values spell the
# compound ones in camelCase, as Helm values do, and either spelling is read.
_KEYS = frozenset(
    {
        "name",
        "default",
        "image",
        "pod_template",
        "docker_image",
        "args",
        "resources",
        "max_resources",
        "env",
        "prewarm",
    }
)
_CAMEL = {
    "podTemplate": "pod_template",
    "dockerImage": "docker_image",
    "localArgs": "args",
    "maxResources": "max_resources",
}
_PREWARM_KEYS = frozenset({"policy", "size", "min", "max"})


class TemplateError(ValueError):
    """The templates file is wrong; the message says where."""


@dataclass(frozen=True)
class Template:
    """One template, as the backends need it (``limits`` is the scheduler's part)."""

    name: str
    limits: TemplateLimits
    image: str | None = None  # Kubernetes: the first container's image
    pod_template: str | None = None  # Kubernetes: a pod template file of its own
    docker_image: str | None = None
    local_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def resources(self) -> Resources:
        return self.limits.resources


def default_templates(limits: Limits) -> tuple[Template, ...]:
    """No templates file: one template, the settings' own."""
    return (Template(DEFAULT_TEMPLATE, limits.all_templates[0]),)


def load_templates(path: str | Path, base: Limits) -> tuple[Template, ...]:
    """The templates in ``path``, the default first. ``base``: the settings' limits,
    whose prewarm settings (hit rate, windows) a template's prewarm starts from."""
    try:
        doc: Any = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise TemplateError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not YAML ({exc})") from None
    if isinstance(doc, dict) and set(doc) == {"templates"}:
        doc = doc["templates"]
    if not isinstance(doc, list) or not doc:
        raise TemplateError(f"{path}: expected a non-empty list of templates")
    templates = [_template(entry, i, base) for i, entry in enumerate(doc)]
    names = [t.name for t, _ in templates]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TemplateError(f"{path}: template names must be unique: {', '.join(dupes)}")
    defaults = [t for t, is_default in templates if is_default]
    if len(defaults) > 1:
        raise TemplateError(f"{path}: more than one default template")
    first = defaults[0] if defaults else templates[0][0]
    return (first, *(t for t, _ in templates if t is not first))


def _template(entry: object, index: int, base: Limits) -> tuple[Template, bool]:
    where = f"templates[{index}]"
    if not isinstance(entry, dict):
        raise TemplateError(f"{where}: expected a mapping")
    both = sorted(camel for camel, snake in _CAMEL.items() if camel in entry and snake in entry)
    if both:
        raise TemplateError(f"{where}: {both[0]} and {_CAMEL[both[0]]} are one key: give one")
    entry = {_CAMEL.get(str(key), str(key)): value for key, value in entry.items()}
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise TemplateError(f"{where}: unknown keys {', '.join(unknown)}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TemplateError(f"{where}: name must be a DNS label (a-z, 0-9, -), got {name!r}")
    where = f"template {name}"
    resources = _resources(entry.get("resources"), f"{where}: resources")
    max_resources = _resources(entry.get("max_resources"), f"{where}: max_resources")
    for kind in ("cpu", "memory"):
        own, most = getattr(resources, kind), getattr(max_resources, kind)
        if own and most and _amount(kind, most) < _amount(kind, own):
            raise TemplateError(f"{where}: max_resources.{kind} is below resources.{kind}")
    size, prewarm = _prewarm(entry.get("prewarm"), where, base)
    limits = TemplateLimits(name, size, prewarm, resources, max_resources)
    env = entry.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise TemplateError(f"{where}: env must map names to strings")
    args = entry.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise TemplateError(f"{where}: args must be a list of strings")
    template = Template(
        name,
        limits,
        image=_text(entry.get("image"), f"{where}: image"),
        pod_template=_text(entry.get("pod_template"), f"{where}: pod_template"),
        docker_image=_text(entry.get("docker_image"), f"{where}: docker_image"),
        local_args=tuple(args),
        env=dict(env),
    )
    return template, entry.get("default") is True


def _text(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TemplateError(f"{where}: expected a string")
    return value


def _resources(value: object, where: str) -> Resources:
    if value is None:
        return Resources()
    if not isinstance(value, dict) or not set(value) <= {"cpu", "memory"}:
        raise TemplateError(f"{where}: expected {{cpu, memory}}")
    try:
        return parse_resources(value)
    except ValueError as exc:
        raise TemplateError(f"{where}: {exc}") from None


def _prewarm(value: object, where: str, base: Limits) -> tuple[int, PrewarmSettings]:
    if value is None:
        return base.prewarm_pool_size, base.prewarm
    if not isinstance(value, dict) or not set(value) <= _PREWARM_KEYS:
        raise TemplateError(f"{where}: prewarm takes {', '.join(sorted(_PREWARM_KEYS))}")
    numbers = {k: value[k] for k in ("size", "min", "max") if k in value}
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers.values()):
        raise TemplateError(f"{where}: prewarm size, min and max are whole numbers >= 0")
    try:
        policy = PrewarmPolicy(value.get("policy", PrewarmPolicy.STATIC.value))
    except ValueError:
        raise TemplateError(f"{where}: prewarm policy is static or adaptive") from None
    settings = PrewarmSettings(
        policy=policy,
        min=numbers.get("min", base.prewarm.min),
        max=numbers.get("max", base.prewarm.max),
        target_warm_hit_rate=base.prewarm.target_warm_hit_rate,
        short_window=base.prewarm.short_window,
        long_window=base.prewarm.long_window,
    )
    if settings.min > settings.max:
        raise TemplateError(f"{where}: prewarm min exceeds max")
    return numbers.get("size", base.prewarm_pool_size), settings


def parse_resources(value: Mapping[str, object]) -> Resources:
    """``{cpu, memory}`` as Resources; ValueError for a value that is no quantity."""
    out: dict[str, str] = {}
    for kind in ("cpu", "memory"):
        raw = value.get(kind)
        if raw is None:
            continue
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ValueError(f"{kind} must be a quantity such as 500m, 2 or 1Gi")
        text = str(raw).strip()
        if _amount(kind, text) <= 0:
            raise ValueError(f"{kind} must be more than zero")
        out[kind] = text
    return Resources(**out)


def _amount(kind: str, value: str) -> int:
    return cpu_millis(value) if kind == "cpu" else memory_bytes(value)


def resolve_shape(limits: Limits, template: str | None, resources: Resources | None) -> Shape:
    """What a session asks for, checked against its template: the shape its pod is
    made in (resources None when they are the template's own)."""
    templates = {t.name: t for t in limits.all_templates}
    name = template or limits.default_template
    chosen = templates.get(name)
    if chosen is None:
        raise UnknownTemplate(name, tuple(templates))
    if resources is None or resources == Resources():
        return Shape(name)
    asked = Resources(
        resources.cpu or chosen.resources.cpu, resources.memory or chosen.resources.memory
    )
    if _same(asked, chosen.resources):
        return Shape(name)
    for kind in ("cpu", "memory"):
        value = getattr(asked, kind)
        if value is None or value == getattr(chosen.resources, kind):
            continue
        most = getattr(chosen.max_resources, kind)
        if most is None:
            raise ResourcesOutOfBounds(name, f"{kind} cannot be chosen (no maxResources.{kind})")
        if _amount(kind, value) > _amount(kind, most):
            raise ResourcesOutOfBounds(name, f"{kind} {value} is above the maximum {most}")
    return Shape(name, asked)


def _same(a: Resources, b: Resources) -> bool:
    for kind in ("cpu", "memory"):
        x, y = getattr(a, kind), getattr(b, kind)
        if (x is None) != (y is None) or (x and y and _amount(kind, x) != _amount(kind, y)):
            return False
    return True


def describe(resources: Resources | None) -> str:
    if resources is None:
        return "the template's own"
    return ", ".join(f"{k} {v}" for k, v in resources.as_dict().items())
