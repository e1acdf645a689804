"""DICOMweb against fhirai's own store: STOW-RS through the durable receive path with the PS3.18
response, QIDO-RS searches, WADO-RS retrieval of the bytes as received, metadata and a rendered
image; roles and tokens as the API has them."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from fhirai.api.models import AccessEvent
from fhirai.api.tokens import token_issue
from fhirai.ingest.models import Instance, Rejection, Study
from integrations.dicomweb.multipart import Part, media_type, parts_build, parts_split

pytestmark = pytest.mark.django_db
TYPE = 'multipart/related; type="application/dicom"; boundary='


def stow(client, files: list[bytes], *, path: str = "/dicomweb/studies", extra: list[Part] = (), **headers):
    body, boundary = parts_build([Part("application/dicom", f) for f in files] + list(extra))
    return client.post(path, data=body, content_type=TYPE + boundary, headers=headers)


def seq(body: dict, tag: str) -> list[dict]:
    return body.get(tag, {}).get("Value", [])


def test_stow_keeps_every_instance_and_answers_the_store_response(client, phantom, blob_dir):
    response = stow(client, phantom.files[:3])
    assert response.status_code == 200 and response["Content-Type"] == "application/dicom+json"
    referenced = seq(response.json(), "00081199")
    assert len(referenced) == 3 and not seq(response.json(), "00081198")
    sop = referenced[0]["00081155"]["Value"][0]
    assert referenced[0]["00081190"]["Value"][0].endswith(f"/instances/{sop}")
    study = Study.objects.get()
    assert study.instance_count == 3 and study.calling_ae == "STOW-RS"
    assert Instance.objects.filter(sop_instance_uid=sop).exists()
    again = stow(client, phantom.files[:1])  # a resend is stored once, and is a success
    assert again.status_code == 200 and Instance.objects.count() == 3


def test_stow_refuses_bad_parts_one_by_one_and_keeps_them(client, phantom, blob_dir):
    response = stow(client, phantom.files[:1], extra=[Part("application/dicom", b"not dicom at all")])
    assert response.status_code == 202
    [failed] = seq(response.json(), "00081198")
    assert failed["00081197"]["Value"] == [0xC000]
    assert Rejection.objects.get().protocol == "dicomweb"
    other = stow(client, phantom.files[1:2], path="/dicomweb/studies/1.2.3.4")
    assert other.status_code == 409 and seq(other.json(), "00081198")[0]["00081197"]["Value"] == [0xA900]
    wrong = client.post("/dicomweb/studies", data=b"{}", content_type="application/json")
    assert wrong.status_code == 415


def test_stow_answers_503_when_storage_is_down(client, phantom, settings, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the blob directory should be")
    settings.FHIRAI_BLOB_DIR = blocked
    response = stow(client, phantom.files[:2])
    assert response.status_code == 503 and response["Retry-After"]
    assert [f["00081197"]["Value"] for f in seq(response.json(), "00081198")] == [[0xA700], [0xA700]]
    assert not Study.objects.exists()


def test_qido_finds_studies_series_and_instances(client, phantom, blob_dir):
    stow(client, phantom.files[:4])
    study = Study.objects.get()
    [found] = client.get("/dicomweb/studies", {"PatientID": study.patient_id}).json()
    assert found["0020000D"]["Value"] == [study.study_uid]
    assert found["00201208"]["Value"] == [4] and found["00201206"]["Value"] == [1]
    family = study.patient_name.split("^")[0]
    assert client.get("/dicomweb/studies", {"PatientName": family[:3].lower() + "*"}).status_code == 200
    assert client.get("/dicomweb/studies", {"PatientID": "nobody"}).status_code == 204
    assert client.get("/dicomweb/studies", {"StudyDate": "20241340"}).status_code == 400
    assert client.get("/dicomweb/studies", {"StudyDate": "19000101-"}).status_code == 200
    [series] = client.get(f"/dicomweb/studies/{study.study_uid}/series").json()
    series_uid = series["0020000E"]["Value"][0]
    assert series["00201209"]["Value"] == [4] and series["00080060"]["Value"] == ["CT"]
    instances = client.get(f"/dicomweb/studies/{study.study_uid}/series/{series_uid}/instances").json()
    assert len(instances) == 4
    assert client.get("/dicomweb/studies/9.9.9/series").status_code == 404


def test_wado_returns_the_bytes_as_received_metadata_and_a_rendered_image(client, phantom, blob_dir):
    stow(client, phantom.files[:2])
    instance = Instance.objects.order_by("id").first()
    study = instance.study
    base = f"/dicomweb/studies/{study.study_uid}/series/{instance.series_uid}/instances/{instance.sop_instance_uid}"
    response = client.get(base, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200
    media, params = media_type(response["Content-Type"])
    [part] = parts_split(response.content, params["boundary"])
    assert media == "multipart/related" and part.data == phantom.files[0]
    whole = client.get(f"/dicomweb/studies/{study.study_uid}")
    assert len(parts_split(whole.content, media_type(whole["Content-Type"])[1]["boundary"])) == 2
    [meta] = client.get(base + "/metadata").json()
    assert meta["00100020"]["Value"] == [study.patient_id] and "7FE00010" not in meta
    assert dcmread(BytesIO(part.data)).SOPInstanceUID == instance.sop_instance_uid
    png = client.get(base + "/rendered", headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert client.get(base + "/rendered", headers={"Accept": "image/jpeg"}).status_code == 406
    assert AccessEvent.objects.filter(action__startswith="dicomweb.").count() >= 4


def test_roles_and_tokens(client, phantom, blob_dir, settings):
    stow(client, phantom.files[:1])
    _, viewer = token_issue("viewer-app", role="viewer")
    _, operator = token_issue("engine", role="operator")
    refused = client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {viewer}"})
    assert refused.status_code == 403
    settings.FHIRAI_REQUIRE_TOKENS = True
    assert client.get("/dicomweb/studies").status_code == 401
    assert stow(client, phantom.files[1:2]).status_code == 401
    ok = client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {operator}"})
    assert ok.status_code == 200
    assert stow(client, phantom.files[1:2], Authorization=f"Bearer {operator}").status_code == 200
    assert AccessEvent.objects.filter(actor="token:engine", action="dicomweb.search").exists()


def test_multipart_parts_survive_binary_content():
    data = [bytes(range(256)) * 4, b"\r\n--not-a-boundary\r\n", b""]
    body, boundary = parts_build([Part("application/dicom", d) for d in data])
    assert [p.data for p in parts_split(body, boundary)] == data


def test_a_whole_study_in_one_request_is_taken_and_the_limit_is_said(client, settings, blob_dir):
    from tests.support.phantom import ct_phantom

    big = ct_phantom(slices=12, size=256)  # ~1.5 MB of pixels: over Django's 2.5 MB form limit with 2 copies
    files = big.files + [f for f in big.files]
    assert sum(len(f) for f in files) > 2_621_440
    assert stow(client, files).status_code == 200
    settings.FHIRAI_STOW_MAX_BYTES = 1_000_000
    too_big = stow(client, big.files)
    assert too_big.status_code == 413 and "FHIRAI_STOW_MAX_BYTES" in too_big.json()["error"]


def test_wado_frames_are_decoded_native_pixels(client, blob_dir):
    import numpy as np
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files" / "examples_ybr_color.dcm"  # 30 frames, JPEG
    original = dcmread(path)
    stow(client, [path.read_bytes()])
    base = (
        f"/dicomweb/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
        f"/instances/{original.SOPInstanceUID}/frames"
    )
    response = client.get(
        f"{base}/1,30", headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert response.status_code == 200
    first, last = parts_split(response.content, media_type(response["Content-Type"])[1]["boundary"])
    expected = original.pixel_array
    assert first.data == np.ascontiguousarray(expected[0]).tobytes()
    assert last.data == np.ascontiguousarray(expected[29]).tobytes()
    assert client.get(f"{base}/31").status_code == 404
    assert client.get(f"{base}/x").status_code == 400
