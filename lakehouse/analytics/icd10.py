"""ICD-10 chapters (WHO ICD-10, 2019 edition): the grouping disease burden is reported by.

A code's chapter is decided by its three-character category (`I63.9` → `I63`), compared as text
against each chapter's first and last category: letter then two digits sort the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column

# (chapter, first category, last category, title)
CHAPTERS: tuple[tuple[str, str, str, str], ...] = (
    ("I", "A00", "B99", "Certain infectious and parasitic diseases"),
    ("II", "C00", "D48", "Neoplasms"),
    ("III", "D50", "D89", "Diseases of the blood and immune mechanism"),
    ("IV", "E00", "E90", "Endocrine, nutritional and metabolic diseases"),
    ("V", "F00", "F99", "Mental and behavioural disorders"),
    ("VI", "G00", "G99", "Diseases of the nervous system"),
    ("VII", "H00", "H59", "Diseases of the eye and adnexa"),
    ("VIII", "H60", "H95", "Diseases of the ear and mastoid process"),
    ("IX", "I00", "I99", "Diseases of the circulatory system"),
    ("X", "J00", "J99", "Diseases of the respiratory system"),
    ("XI", "K00", "K93", "Diseases of the digestive system"),
    ("XII", "L00", "L99", "Diseases of the skin and subcutaneous tissue"),
    ("XIII", "M00", "M99", "Diseases of the musculoskeletal system and connective tissue"),
    ("XIV", "N00", "N99", "Diseases of the genitourinary system"),
    ("XV", "O00", "O99", "Pregnancy, childbirth and the puerperium"),
    ("XVI", "P00", "P96", "Certain conditions originating in the perinatal period"),
    ("XVII", "Q00", "Q99", "Congenital malformations and chromosomal abnormalities"),
    ("XVIII", "R00", "R99", "Symptoms, signs and abnormal findings, not elsewhere classified"),
    ("XIX", "S00", "T98", "Injury, poisoning and certain other consequences of external causes"),
    ("XX", "V01", "Y98", "External causes of morbidity and mortality"),
    ("XXI", "Z00", "Z99", "Factors influencing health status and contact with health services"),
    ("XXII", "U00", "U85", "Codes for special purposes"),
)
UNKNOWN = "unknown"
TITLES = {chapter: title for chapter, _, _, title in CHAPTERS} | {UNKNOWN: "Not an ICD-10 category"}


def chapter_of(code: str) -> str:
    """The chapter of one code (`unknown` for a category no chapter holds)."""
    category = code[:3].upper()
    for chapter, first, last, _ in CHAPTERS:
        if first <= category <= last:
            return chapter
    return UNKNOWN


def chapter_column(code: Column) -> Column:
    """The same decision as a Spark column expression."""
    from pyspark.sql import functions as F

    category = F.upper(F.substring(code, 1, 3))
    result = F.lit(UNKNOWN)
    for chapter, first, last, _ in reversed(CHAPTERS):
        result = F.when(category.between(first, last), F.lit(chapter)).otherwise(result)
    return result
