import pytest

from sandbox_controller.kubesim.selectors import SelectorError, field_matcher, label_matcher

POD = {"metadata": {"name": "p1", "labels": {"app": "a", "tier": "web"}}, "type": "Warning"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("app=a", True),
        ("app==a", True),
        ("app!=a", False),
        ("app!=b", True),
        ("missing!=x", True),
        ("app in (a, b)", True),
        ("app in (b,c)", False),
        ("app notin (b,c)", True),
        ("tier,app=a", True),
        ("!tier", False),
        ("!missing", True),
        ("missing", False),
        ("app in (a),tier notin (web)", False),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    assert label_matcher(selector)(POD) is matches


def test_field_selector() -> None:
    assert field_matcher("metadata.name=p1,type=Warning")(POD)
    assert not field_matcher("metadata.name!=p1")(POD)
    assert not field_matcher("involvedObject.kind=Pod")(POD)


def test_bad_selector() -> None:
    with pytest.raises(SelectorError):
        label_matcher("app in a")
