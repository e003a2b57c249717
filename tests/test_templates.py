"""templates.py: the templates file, and what a session may ask of its template."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_controller.config import ConfigError, load_settings
from sandbox_controller.errors import ResourcesOutOfBounds, UnknownTemplate
from sandbox_controller.model import DEFAULT_TEMPLATE, PrewarmPolicy, Resources, Shape
from sandbox_controller.templates import TemplateError, load_templates, resolve_shape

GOOD = """
templates:
  - name: small
    resources: {cpu: 500m, memory: 1Gi}
    maxResources: {cpu: "2", memory: 4Gi}
    prewarm: {size: 2}
  - name: node
    default: true
    image: registry.example/node:1
    dockerImage: agent-sandbox/devsandbox:dev
    env: {LANG: C.UTF-8}
    prewarm: {policy: adaptive, min: 1, max: 5}
"""


def settings_with(tmp_path: Path, text: str) -> object:
    path = tmp_path / "templates.yaml"
    path.write_text(text)
    return load_settings(templates_file=str(path))


def test_a_file_gives_named_templates_the_default_first(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, GOOD)
    limits = settings.limits()  # type: ignore[attr-defined]
    assert [t.name for t in limits.templates] == ["node", "small"]
    assert limits.default_template == "node"
    node, small = limits.templates
    assert node.prewarm.policy is PrewarmPolicy.ADAPTIVE and node.prewarm.max == 5
    assert small.prewarm_pool_size == 2 and small.resources == Resources("500m", "1Gi")
    (node_t, _) = settings.templates()  # type: ignore[attr-defined]
    assert node_t.image == "registry.example/node:1" and node_t.env == {"LANG": "C.UTF-8"}


def test_the_file_takes_the_design_spelling_of_each_key(tmp_path: Path) -> None:
    """DESIGN's keys are snake_case (max_resources, pod_template, args); the chart's
    camelCase spelling of the same keys is read too."""
    settings = settings_with(
        tmp_path,
        "templates:\n  - name: py\n    resources: {cpu: 500m}\n"
        "    max_resources: {cpu: '2'}\n    args: [--workspace, /w]\n"
        "    pod_template: /etc/py-pod.yaml\n",
    )
    (py,) = settings.templates()  # type: ignore[attr-defined]
    assert py.limits.max_resources == Resources("2")
    assert py.local_args == ("--workspace", "/w") and py.pod_template == "/etc/py-pod.yaml"


def test_without_a_file_there_is_one_default_template_of_the_settings() -> None:
    limits = load_settings(prewarm_pool_size=3).limits()
    assert limits.templates == ()
    (only,) = limits.all_templates
    assert (only.name, only.prewarm_pool_size) == (DEFAULT_TEMPLATE, 3)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("- name: Bad_Name\n", "DNS label"),
        ("- name: a\n- name: a\n", "unique"),
        ("- name: a\n  default: true\n- name: b\n  default: true\n", "more than one default"),
        ("- name: a\n  colour: blue\n", "unknown keys colour"),
        ("- name: a\n  resources: {cpu: lots}\n", "quantity"),
        ("- name: a\n  resources: {cpu: '2'}\n  maxResources: {cpu: '1'}\n", "below"),
        ("- name: a\n  prewarm: {policy: eager}\n", "static or adaptive"),
        ("- name: a\n  args: [1]\n", "args must be a list of strings"),
        ("- name: a\n  maxResources: {cpu: '1'}\n  max_resources: {cpu: '1'}\n", "one key"),
        ("[]\n", "non-empty list"),
    ],
)
def test_a_wrong_file_is_refused_at_start_up_saying_where(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(ConfigError, match="SANDBOX_TEMPLATES_FILE") as caught:
        settings_with(tmp_path, text)
    assert says in str(caught.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"nope\.yaml"):
        load_templates(tmp_path / "nope.yaml", load_settings().limits())


def test_resolve_shape_checks_the_template_and_the_bounds(tmp_path: Path) -> None:
    limits = settings_with(tmp_path, GOOD).limits()  # type: ignore[attr-defined]
    assert resolve_shape(limits, None, None) == Shape("node")
    assert resolve_shape(limits, "small", None) == Shape("small")
    # The template's own, however spelled: its warm pool serves it.
    assert resolve_shape(limits, "small", Resources("0.5", "1024Mi")) == Shape("small")
    assert resolve_shape(limits, "small", Resources("2")) == Shape("small", Resources("2", "1Gi"))
    with pytest.raises(ResourcesOutOfBounds, match="above the maximum"):
        resolve_shape(limits, "small", Resources(memory="5Gi"))
    with pytest.raises(ResourcesOutOfBounds, match="cannot be chosen"):
        resolve_shape(limits, "node", Resources(cpu="1"))
    with pytest.raises(UnknownTemplate):
        resolve_shape(limits, "gpu", None)
