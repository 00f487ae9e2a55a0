from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.imaging.dicom import view_of


def _code(scheme: str, value: str) -> Sequence:
    item = Dataset()
    item.CodingSchemeDesignator = scheme
    item.CodeValue = value
    return Sequence([item])


def _frame_laterality(side: str) -> Sequence:
    anatomy = Dataset()
    anatomy.FrameLaterality = side
    group = Dataset()
    group.FrameAnatomySequence = Sequence([anatomy])
    return Sequence([group])


def _dataset(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"ViewPosition": "CC", "ImageLaterality": "L"}, "L-CC"),
        ({"ViewPosition": "MLO", "ImageLaterality": "R"}, "R-MLO"),
        # View Position outranks a contradicting code sequence.
        (
            {
                "ViewPosition": "CC",
                "ViewCodeSequence": _code("SCT", "399368009"),
                "ImageLaterality": "R",
            },
            "R-CC",
        ),
        ({"ViewCodeSequence": _code("SCT", "399368009"), "Laterality": "L"}, "L-MLO"),
        ({"ViewCodeSequence": _code("SRT", "R-10242"), "Laterality": "R"}, "R-CC"),
        ({"ViewCodeSequence": _code("SNM3", "R-10226"), "Laterality": "R"}, "R-MLO"),
        # Image Laterality outranks series Laterality.
        ({"ViewPosition": "CC", "ImageLaterality": "R", "Laterality": "L"}, "R-CC"),
        (
            {
                "ViewPosition": "MLO",
                "SharedFunctionalGroupsSequence": _frame_laterality("L"),
            },
            "L-MLO",
        ),
        ({"SeriesDescription": "screening RMLO"}, "R-MLO"),
        ({"SeriesDescription": "L CC 2D"}, "L-CC"),
        ({"ViewPosition": "MLO", "SeriesDescription": "LCC"}, "L-MLO"),
        # A present but other view or side decides: no fall-through.
        ({"ViewPosition": "ML", "SeriesDescription": "LCC"}, None),
        ({"ViewCodeSequence": _code("SRT", "R-1024A"), "ImageLaterality": "L"}, None),
        ({"ViewPosition": "CC", "ImageLaterality": "B", "Laterality": "L"}, None),
        ({"ViewPosition": "CC"}, None),
        ({"ImageLaterality": "L"}, None),
        ({"SeriesDescription": "LCC RMLO"}, None),
        (
            {
                "ViewPosition": "",
                "ViewCodeSequence": _code("SCT", "399162004"),
                "ImageLaterality": "L",
            },
            "L-CC",
        ),
    ],
)
def test_view_of_precedence(
    attributes: dict[str, object], expected: str | None
) -> None:
    assert view_of(_dataset(**attributes)) == expected
