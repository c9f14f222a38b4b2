"""The organisation directory refuses entries that would be rendered unchecked into invitations and
CarePlans (planning stores system-made CarePlan versions without a second FHIR validation)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.directory import Organisation, load_directory
from tests.support.suite import DIRECTORY


def test_the_shipped_directory_loads():
    assert load_directory(DIRECTORY).organisations


@pytest.mark.parametrize(
    ("hsa_id", "name", "field"),
    [
        ("", "Vårdcentralen", "hsa_id"),
        ("SE 2321", "Vårdcentralen", "hsa_id"),
        ("SE2321000016-VC9", "", "name"),
    ],
)
def test_an_empty_or_malformed_id_or_name_is_refused_naming_the_field(hsa_id, name, field):
    with pytest.raises(ValidationError) as err:
        Organisation(hsa_id=hsa_id, name=name, kind="primary_care_unit")
    assert err.value.errors()[0]["loc"] == (field,)
