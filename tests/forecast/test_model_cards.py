"""Verification reads each version's model card alone, from a local base path or object storage."""

import json

import pytest

from forecast import verify
from serving.store import version_file

CARD = {"model_name": "jena_temperature", "metrics": {"test_mae_degC": 2.3, "persistence_mae_degC": 2.6}}


def upload(local_base, url: str) -> None:
    """Every file under the local base path, to the same place under `url`."""
    import fsspec

    fs = fsspec.filesystem(url.split("://")[0])
    for path in sorted(local_base.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{url}/{path.relative_to(local_base).as_posix()}", path.read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("store", ["local", "s3", "gs"])
def test_a_versions_card_is_read_alone_and_a_version_without_one_is_named(store, publish_card, tmp_path, request):
    base = tmp_path / "models"
    publish_card(base, 1, CARD)
    publish_card(base, 2, None)
    if store == "local":
        directory = base / "jena_temperature"
    else:
        server = request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[store])
        url = server.create_bucket("models")
        upload(base, url)
        directory = f"{url}/jena_temperature"
    assert json.loads(version_file(directory, 1, "assets.extra/model_card.json")) == CARD
    assert verify.model_card(directory, 1) == CARD
    assert verify.model_card(directory, 7) is None  # not published (any more): no blessing figures, no error
    with pytest.raises(verify.VerifyError, match="version 2 has no model card"):
        verify.model_card(directory, 2)
