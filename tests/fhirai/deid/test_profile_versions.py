"""Site profiles in the console: each save is a new version, versions never change, one is active
and de-identification records which one it applied."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread

from fhirai.deid.models import ProfileVersion
from fhirai.deid.profile import dataset_deidentify, profile_current

pytestmark = pytest.mark.django_db


def test_console_versions_and_activation(admin_client, phantom, settings):
    settings.FHIRAI_DEID_OPTIONS = []
    assert profile_current().name == settings.FHIRAI_DEID_PROFILE  # nothing active: settings
    url = "/admin/deid/profileversion/add/"
    for options in (["retain-uids"], ["retain-patient-characteristics", "retain-device-identity"]):
        response = admin_client.post(
            url, {"name": "site", "options": options, "private_safelist": "[]", "note": ""}
        )
        assert response.status_code == 302, response.content[:500]
    assert list(ProfileVersion.objects.values_list("version", flat=True).order_by("version")) == [1, 2]
    refused = admin_client.post(
        url, {"name": "site", "options": ["retain-everything"], "private_safelist": "[]"}
    )
    assert refused.status_code == 200 and ProfileVersion.objects.count() == 2
    v2 = ProfileVersion.objects.get(version=2)
    admin_client.post("/admin/deid/profileversion/", {"action": "activate", "_selected_action": [v2.pk]})
    assert ProfileVersion.objects.get(active=True) == v2
    admin_client.post(
        f"/admin/deid/profileversion/{v2.pk}/change/",
        {"name": "site", "options": [], "private_safelist": "[]"},
    )
    v2.refresh_from_db()
    assert v2.options == ["retain-device-identity", "retain-patient-characteristics"]  # immutable (sorted)
    out, _ = dataset_deidentify(phantom.files[0])
    ds = dcmread(BytesIO(out))
    assert ds.DeidentificationMethod.startswith("fhirai site v2")
    assert {"113100", "113108", "113109"} == {c.CodeValue for c in ds.DeidentificationMethodCodeSequence}
