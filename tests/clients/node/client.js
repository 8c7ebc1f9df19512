// A client of notifymesh in another language, as a user outside the repo writes
// one: Node's grpc-js with the service definitions loaded from protos/ at run
// time, TLS trusting the mesh's CA, the admin API key as a bearer token. It
// publishes and receives over the streaming Subscribe, notifies a recipient on
// two channels, and provokes the API's errors; it prints one JSON object of what
// it saw, which tests/system/test_node_client.py judges.
//
// node client.js PROTOS_DIR FRONTEND_ADDR CA_PEM ADMIN_KEY_FILE NAME_SUFFIX
"use strict";
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [protos, addr, caPath, keyPath, suffix] = process.argv.slice(2);
const definition = loader.loadSync(["notifymesh/v1/pubsub.proto", "notifymesh/v1/notify.proto"],
  {includeDirs: [protos], longs: String, enums: String, defaults: true, oneofs: true});
const v1 = grpc.loadPackageDefinition(definition).notifymesh.v1;
const credentials = grpc.credentials.createSsl(fs.readFileSync(caPath));
const key = fs.readFileSync(keyPath, "utf8").trim();
const bearer = (token) => {
  const metadata = new grpc.Metadata();
  if (token !== null) metadata.set("authorization", "Bearer " + token);
  return metadata;
};
const publisher = new v1.Publisher(addr, credentials);
const subscriber = new v1.Subscriber(addr, credentials);
const notifications = new v1.Notifications(addr, credentials);
const deadline = () => new Date(Date.now() + 10000);

function call(client, method, request, token = key) {
  return new Promise((resolve, reject) => client[method](request, bearer(token), {deadline: deadline()},
    (error, response) => (error ? reject(error) : resolve(response))));
}

// The status of a call that should fail: {code, details} (code as its name), or {code: "OK"}.
function status(client, method, request, token = key) {
  return call(client, method, request, token).then(
    () => ({code: "OK"}), (error) => ({code: grpc.status[error.code], details: error.details}));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what, attempts = 150) {
  for (let i = 0; i < attempts; i++) {
    const value = await what();
    if (value) return value;
    await sleep(100);
  }
  return null;
}

async function pubsub(report) {
  const topic = "node-" + suffix, subscription = "node-sub-" + suffix;
  report.topic = (await call(publisher, "createTopic", {topic: {name: topic}})).name;
  report.subscription = (await call(subscriber, "createSubscription",
    {subscription: {name: subscription, topic}})).topic;
  const received = [];
  const stream = subscriber.subscribe({subscription}, bearer(key));
  stream.on("data", (response) => received.push(...response.receivedMessages));
  stream.on("error", (error) => {
    if (error.code !== grpc.status.CANCELLED) report.stream_error = grpc.status[error.code] + ": " + error.details;
  });
  const published = await call(publisher, "publish",
    {topic, messages: [{data: Buffer.from("hello from node"), attributes: {language: "javascript"}}]});
  report.published_ids = published.messageIds;
  const message = await until(() => received[0]);
  stream.cancel();
  if (message) {
    report.received = {id: message.message.messageId, data: message.message.data.toString(),
                       attributes: message.message.attributes, attempt: message.deliveryAttempt};
    report.ack = await status(subscriber, "acknowledge", {subscription, ackIds: [message.ackId]});
  }
  report.errors = {
    publish_to_unknown_topic: await status(publisher, "publish",
      {topic: "missing-" + suffix, messages: [{data: Buffer.from("x")}]}),
    bad_topic_name: await status(publisher, "createTopic", {topic: {name: "bad name!"}}),
    topic_again: await status(publisher, "createTopic", {topic: {name: topic}}),
    no_credentials: await status(publisher, "getTopic", {name: topic}, null),
    wrong_key: await status(publisher, "getTopic", {name: topic}, "wrong"),
  };
}

async function notify(report) {
  const recipient = "node-user-" + suffix, category = "node-billing-" + suffix;
  const template = "node-invoice-" + suffix;
  await call(notifications, "upsertRecipient",
    {recipient: {id: recipient, email: recipient + "@example.com", phone: "+14155550123", locale: "en"}});
  await call(notifications, "createCategory", {category: {name: category}});
  await call(notifications, "createTemplate", {template: {name: template, contents: [
    {channel: "EMAIL", subject: "Invoice {{ data.invoice }}", text: "Invoice {{ data.invoice }} is due."},
    {channel: "SMS", text: "Invoice {{ data.invoice }} is due."}]}});
  report.errors_notify = {
    bad_phone: await status(notifications, "upsertRecipient", {recipient: {id: "n-" + suffix, phone: "123"}}),
    template_not_compiling: await status(notifications, "createTemplate",
      {template: {name: "node-broken-" + suffix, contents: [{channel: "SMS", text: "fine\n{% if %}"}]}}),
    unknown_template: await status(notifications, "notify",
      {template: "missing-" + suffix, category, recipients: [recipient]}),
    data_not_json: await status(notifications, "notify",
      {template, category, recipients: [recipient], data: "[1"}),
  };
  const request = {template, category, recipients: [recipient], data: JSON.stringify({invoice: 17}),
                   idempotencyKey: "node-" + suffix};
  const id = (await call(notifications, "notify", request)).notificationId;
  report.notification_id = id;
  const sent = (sends) => sends.length === 2 && sends.every((s) => ["SEND_SENT", "SEND_DELIVERED"].includes(s.state));
  const notification = await until(async () => {
    const n = await call(notifications, "getNotification", {id});
    return sent(n.sends) ? n : null;
  });
  const last = notification || await call(notifications, "getNotification", {id});
  report.sends = last.sends.map((s) => ({channel: s.channel, state: s.state,
                                         timeline: s.timeline.map((e) => e.state)}));
  report.repeat_id = (await call(notifications, "notify", request)).notificationId;
}

(async () => {
  const report = {};
  try {
    await pubsub(report);
    await notify(report);
  } catch (error) {
    report.failed = error.code !== undefined ? grpc.status[error.code] + ": " + error.details : String(error.stack);
  }
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(0);
})();
