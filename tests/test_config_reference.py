"""docs/config_reference.md is generated from cad/config.py and must be current; how the comments
of cad/config.py become the keys' meanings."""
import pytest

from cad.utils.config_reference import COMMAND, PAGE, ConfigReferenceError, key_comments, render_config_reference

from conftest import REPO

SOURCE = '''
def add_cad_config(cfg):
    _add_a_config(cfg)


def _add_a_config(cfg: CN) -> None:
    """Section A.

    More text."""
    cfg.CAD = CN()
    # Threads.
    cfg.CAD.THREADS = 0
    m = cfg.CAD.MOTION = CN()
    # Frames per clip,
    # two lines.
    m.CLIP = 5
    # Mean and std, one comment for both.
    m.MEAN = 0.5
    m.STD = 0.5
    head = cfg.MODEL.SEM_SEG_HEAD
    # A comment not above a key.

    # Mask channels.
    head.MASK_DIM = 256
'''


def test_key_comments_pins_the_rules():
    got = [(k.key, k.section, k.section_doc, k.comment) for k in key_comments(SOURCE)]
    assert got == [
        ("CAD.THREADS", "a", "Section A.", "Threads."),
        ("CAD.MOTION.CLIP", "a", "Section A.", "Frames per clip, two lines."),
        ("CAD.MOTION.MEAN", "a", "Section A.", "Mean and std, one comment for both."),
        ("CAD.MOTION.STD", "a", "Section A.", "Mean and std, one comment for both."),
        ("MODEL.SEM_SEG_HEAD.MASK_DIM", "a", "Section A.", "Mask channels."),
    ]


def test_key_without_comment_fails():
    source = SOURCE.replace("    m.STD = 0.5\n", "    m.STD = 0.5\n\n    m.BLANK_ABOVE = 1\n    m.GROUP = 2\n")
    with pytest.raises(ConfigReferenceError, match=r"without a comment above them in cad/config.py: CAD.MOTION.BLANK_ABOVE$"):
        key_comments(source.replace("    m.GROUP = 2\n", ""))
    with pytest.raises(ConfigReferenceError, match=r": CAD.MOTION.BLANK_ABOVE, CAD.MOTION.GROUP$"):
        key_comments(source.replace("    m.BLANK_ABOVE = 1\n    m.GROUP", "    m.BLANK_ABOVE = 1\n\n    m.GROUP"))


def test_config_reference_page_is_current():
    """Every key of add_cad_config has a comment (render raises otherwise) and the page is current."""
    text = render_config_reference()
    assert "| `SSL.EMA_DECAY` | `0.9996` | EMA decay d of the teacher" in text
    assert (REPO / PAGE).read_text() == text, f"{PAGE} is stale: run `.venv/bin/python {COMMAND}` and commit it"
