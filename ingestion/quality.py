"""A Great Expectations suite per dataset, run on the curated batch before it is committed.

Row rules already sent bad rows to quarantine; the suite checks what rows alone cannot see
(the batch as a whole): business keys unique, required and partition columns complete, allowed
values respected. A failed expectation fails the run loudly and nothing is
committed. GX runs each expectation as its own Spark job, so the suite stays small.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lakehouse.contracts import Contract

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def build_suite(contract: Contract) -> list[Any]:
    import great_expectations.expectations as gxe

    hospital = contract.partition_by.hospital
    expectations: list[Any] = [
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(contract.business_key))
        if len(contract.business_key) > 1
        else gxe.ExpectColumnValuesToBeUnique(column=contract.business_key[0]),
        gxe.ExpectColumnValuesToNotBeNull(column="month"),
    ]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in contract.required if c != hospital]
    expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=hospital))
    expectations += [
        gxe.ExpectColumnValuesToBeInSet(column=c.name, value_set=list(c.allowed))
        for c in contract.columns
        if c.allowed
    ]
    return expectations


def run_suite(df: DataFrame, contract: Contract, *, run_id: str) -> dict[str, Any]:
    """The suite's result as a JSON-ready dict (`success`, per-expectation results)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = context.suites.add(gx.ExpectationSuite(name=f"{contract.name}-curated"))
    for expectation in build_suite(contract):
        suite.add_expectation(expectation)
    batch = (
        context.data_sources.add_spark(f"{contract.name}-source")
        .add_dataframe_asset(contract.name)
        .add_batch_definition_whole_dataframe(run_id)
    )
    validation = gx.ValidationDefinition(data=batch, suite=suite, name=f"{contract.name}-{run_id}")
    result: dict[str, Any] = validation.run(batch_parameters={"dataframe": df}).to_json_dict()
    return result


def failed_expectations(result: dict[str, Any]) -> list[str]:
    out = []
    for r in result.get("results", []):
        if not r.get("success"):
            config = r.get("expectation_config", {})
            kwargs = {k: v for k, v in config.get("kwargs", {}).items() if k != "batch_id"}
            out.append(f"{config.get('type')} {kwargs}")
    return out
