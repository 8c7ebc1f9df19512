"""Categories, templates and providers through the metadata service over gRPC
(its internal Metadata API: the frontend's public one strips secrets), stored in
etcd and mirrored by every process's Cluster."""

import asyncio

import grpc
import pytest
from helpers import aio_channel, unique

from gen.notifymesh.internal.v1 import metadata_pb2_grpc
from gen.notifymesh.v1 import notify_pb2
from metadata.notify_store import KEEP_VERSIONS
from notifymesh import errors
from notifymesh.contracts import PROVIDERS
from notifymesh.server.cluster import Cluster, connect_etcd

EMAIL, SMS, WEBHOOK = notify_pb2.EMAIL, notify_pb2.SMS, notify_pb2.WEBHOOK
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@pytest.fixture
async def metadata(mesh):
    addr = next(addr for node, addr in mesh.members().items() if node.startswith("metadata"))
    async with aio_channel(mesh.data_dir, addr) as channel:
        yield metadata_pb2_grpc.MetadataStub(channel)


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details()


def invoice(name: str, text: str = "You owe {{ data.amount }}") -> notify_pb2.Template:
    return notify_pb2.Template(name=name, contents=[
        notify_pb2.TemplateContent(channel=EMAIL, subject="Invoice", text=text, html="<p>{{ data.amount }}</p>"),
        notify_pb2.TemplateContent(channel=SMS, locale="de", text="Betrag {{ data.amount }}")])


async def test_creating_a_template_again_adds_a_version_and_keeps_the_latest(metadata, mesh):
    name = unique("invoice")
    create = notify_pb2.CreateTemplateRequest
    first = await metadata.CreateTemplate(create(template=invoice(name, "v1")))
    assert (first.version, first.default_locale) == (1, "en") and first.create_time.seconds
    second = await metadata.CreateTemplate(create(template=invoice(name, "v2")))
    assert second.version == 2
    assert (await metadata.GetTemplate(notify_pb2.GetTemplateRequest(name=name))).contents[0].text == "v2"
    assert (await metadata.GetTemplate(notify_pb2.GetTemplateRequest(name=name, version=1))).contents[0].text == "v1"
    listed = {t.name: t for t in (await metadata.ListTemplates(notify_pb2.ListTemplatesRequest())).templates}
    assert listed[name].version == 2

    # Concurrent creates each get a version of their own.
    made = await asyncio.gather(*(metadata.CreateTemplate(create(template=invoice(name, f"c{i}")))
                                  for i in range(3)))
    assert sorted(t.version for t in made) == [3, 4, 5]
    for version in range(6, KEEP_VERSIONS + 3):
        await metadata.CreateTemplate(create(template=invoice(name, f"v{version}")))
    # Versions 1 and 2 went when versions 21 and 22 came.
    for version in (1, 2):
        code, details = await status_of(metadata.GetTemplate(notify_pb2.GetTemplateRequest(name=name, version=version)))
        assert code == NOT_FOUND and details == f"template {name!r} version {version} not found"
    assert (await metadata.GetTemplate(notify_pb2.GetTemplateRequest(name=name, version=3))).version == 3

    # Every process's mirror has the stored versions.
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    cluster = Cluster(etcd, 4 << 20, mesh.client_tls())
    await cluster.start()
    try:
        assert (await cluster.template(name)).version == KEEP_VERSIONS + 2
        assert (await cluster.template(name, 3)).contents[0].text in ("c0", "c1", "c2")
        assert len(cluster.templates.groups[name]) == KEEP_VERSIONS
        with pytest.raises(errors.NotFound, match=f"template {name!r} version 1 not found"):
            await cluster.template(name, 1)

        await metadata.DeleteTemplate(notify_pb2.DeleteTemplateRequest(name=name))
        code, details = await status_of(metadata.GetTemplate(notify_pb2.GetTemplateRequest(name=name)))
        assert (code, details) == (NOT_FOUND, f"template {name!r} not found")
        code, _ = await status_of(metadata.DeleteTemplate(notify_pb2.DeleteTemplateRequest(name=name)))
        assert code == NOT_FOUND
        for _ in range(50):
            if name not in cluster.templates.groups:
                break
            await asyncio.sleep(0.1)
        assert name not in cluster.templates.groups
        assert (await metadata.CreateTemplate(create(template=invoice(name)))).version == 1
    finally:
        await cluster.stop()
        await etcd.close()


@pytest.mark.parametrize("template,message", [
    (notify_pb2.Template(name="x", contents=[]), "invalid template name 'x'"),
    (notify_pb2.Template(name="welcome", contents=[]), "template 'welcome' has no content"),
    (notify_pb2.Template(name="welcome", contents=[notify_pb2.TemplateContent(channel=EMAIL, text="hi")]),
     "email/default: a email content needs subject"),
    (notify_pb2.Template(name="welcome", contents=[
        notify_pb2.TemplateContent(channel=EMAIL, locale="de", subject="Hallo", text="x", html="<p>\n{{ a }\n")]),
     "email/de html line 2: unexpected '}'"),
    (notify_pb2.Template(name="welcome", contents=[notify_pb2.TemplateContent(channel=SMS, text="a"),
                                                   notify_pb2.TemplateContent(channel=SMS, text="b")]),
     "two sms/default contents"),
])
async def test_bad_templates_are_refused_with_invalid_argument(metadata, template, message):
    code, details = await status_of(metadata.CreateTemplate(notify_pb2.CreateTemplateRequest(template=template)))
    assert code == INVALID and message in details


async def test_categories_are_created_updated_and_deleted(metadata):
    name = unique("marketing")
    category = notify_pb2.Category(name=name, rate_limit=notify_pb2.RateLimit(limit=3, period_seconds=3600),
                                   over_limit=notify_pb2.DELAY)
    created = await metadata.CreateCategory(notify_pb2.CreateCategoryRequest(category=category))
    assert created.rate_limit.limit == 3 and created.create_time.seconds
    code, _ = await status_of(metadata.CreateCategory(notify_pb2.CreateCategoryRequest(category=category)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    updated = await metadata.UpdateCategory(notify_pb2.UpdateCategoryRequest(
        category=notify_pb2.Category(name=name, mandatory=True)))
    assert updated.mandatory and not updated.HasField("rate_limit") and updated.over_limit == notify_pb2.DROP
    assert updated.create_time == created.create_time
    assert await metadata.GetCategory(notify_pb2.GetCategoryRequest(name=name)) == updated
    listed = (await metadata.ListCategories(notify_pb2.ListCategoriesRequest())).categories
    assert updated in listed
    code, details = await status_of(metadata.CreateCategory(notify_pb2.CreateCategoryRequest(
        category=notify_pb2.Category(name=unique("c"), rate_limit=notify_pb2.RateLimit(limit=5)))))
    assert code == INVALID and "rate limit period 0s out of range" in details
    await metadata.DeleteCategory(notify_pb2.DeleteCategoryRequest(name=name))
    for call in (metadata.GetCategory(notify_pb2.GetCategoryRequest(name=name)),
                 metadata.DeleteCategory(notify_pb2.DeleteCategoryRequest(name=name)),
                 metadata.UpdateCategory(notify_pb2.UpdateCategoryRequest(category=notify_pb2.Category(name=name)))):
        code, details = await status_of(call)
        assert (code, details) == (NOT_FOUND, f"category {name!r} not found")


@pytest.fixture
async def providers_restored(mesh):
    """The mesh's providers as they were, after the test (they are cluster-wide)."""
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    before = {kv.key: kv.value for kv in await etcd.get_prefix(PROVIDERS)}
    yield
    await etcd.delete_prefix(PROVIDERS)
    for key, value in before.items():
        await etcd.put(key, value)
    await etcd.close()


async def test_provider_secrets_are_kept_and_returned_to_internal_callers(metadata, providers_restored):
    sms = notify_pb2.Provider(channel=SMS, kind="sms_http", secret="token-1",
                              settings={"base_url": "http://127.0.0.1:9/sms", "account": "acct", "from": "+1415"})
    stored = await metadata.SetProvider(notify_pb2.SetProviderRequest(provider=sms))
    assert (stored.secret, stored.secret_set, stored.max_concurrency) == ("token-1", True, 32)
    # keep_secret: a change of settings without the secret keeps it.
    sms.ClearField("secret")
    sms.settings["account"] = "acct-2"
    stored = await metadata.SetProvider(notify_pb2.SetProviderRequest(provider=sms, keep_secret=True))
    assert (stored.secret, stored.settings["account"]) == ("token-1", "acct-2")
    got = await metadata.GetProvider(notify_pb2.GetProviderRequest(channel=SMS))
    assert got == stored
    # Without keep_secret, an empty secret clears it.
    stored = await metadata.SetProvider(notify_pb2.SetProviderRequest(provider=sms))
    assert (stored.secret, stored.secret_set) == ("", False)
    listed = (await metadata.ListProviders(notify_pb2.ListProvidersRequest())).providers
    assert stored in listed

    code, details = await status_of(metadata.SetProvider(notify_pb2.SetProviderRequest(provider=notify_pb2.Provider(
        channel=EMAIL, kind="smtp", settings={"host": "localhost"}))))
    assert (code, details) == (INVALID, "smtp provider: missing setting(s) port, from")
    code, details = await status_of(metadata.SetProvider(notify_pb2.SetProviderRequest(provider=notify_pb2.Provider(
        channel=WEBHOOK, kind="webhook", max_concurrency=1001))))
    assert (code, details) == (INVALID, "max concurrency 1001 out of range: 1 to 1000")
    code, _ = await status_of(metadata.GetProvider(notify_pb2.GetProviderRequest(channel=0)))
    assert code == INVALID
