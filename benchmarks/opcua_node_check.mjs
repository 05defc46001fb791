// An independent OPC UA client (node-opcua) against a running station, as a PLC integrator would try it:
//   1. Server BuildInfo (and the endpoints' application description) is the station's, not asyncua's "FreeOpcUa";
//   2. SignAndEncrypt (Basic256Sha256), the server certificate accepted automatically (unknown: trusted on first use):
//      its subject alternative names hold the host / IP address connected to, notBefore is a day back;
//   3. the documented PLC sequence (docs/INTEGRATION.md): anonymous calls refused, login, PrepareRecipe,
//      StartSingleJob(MeasId "M-1", PartId "P-1", ProductId "X-7"), ResultReady events, GetResultById, LastResult:
//      PartId / MeasId / JobId there, and equal to the ledger row (read with python's sqlite3 after the run, --db);
//   4. a second session on the same secure channel with a wrong password: the first, logged-in session works on
//      (reads, a method call, its events);
//   5. Halt: the state machine reads Halted while the client is still connected; the server goes away once the
//      client disconnects.
// Method arguments are built from each method's InputArguments (the NodeSet's types), as a typed PLC client does.
// It ends with Halt, which ends the station's run: point it at a station under test, never at a producing line.
//
// Install node-opcua outside the repository, then run from that folder (node resolves node-opcua from the current
// directory when the script's own folder has none):
//   mkdir -p /tmp/nodecheck && cd /tmp/nodecheck && npm init -y && npm install node-opcua@2
//   # a station with an [opcua] table (control = "plc", a users_file), e.g. docs/results/opcua-node-check.txt
//   cd /tmp/nodecheck && node /path/to/repo/benchmarks/opcua_node_check.mjs opc.tcp://HOST:4840 plc PASSWORD \
//       [--db station-data/rejects.db --python /path/to/repo/.venv/bin/python] [--pki DIR] [--json out.json]
// Arguments: the endpoint URL (connect by the name or address the PLC uses: the certificate check looks for it),
// the user and password of a users_file entry; --db: the station's ledger, compared with what the client saw once
// the station has exited (after Halt); --python: the interpreter for that, where the station's package is installed
// (its version is compared with BuildInfo's SoftwareVersion; default python3); --pki: the client's
// certificate store (default: a folder under the system's temp dir). Exit status 0 when every point passes.
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import fs from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import os from "node:os";
import path from "node:path";

let opcua;
let opcuaVersion;
try {
    opcua = await import("node-opcua");
    opcuaVersion = createRequire(import.meta.url)("node-opcua/package.json").version;
} catch {
    const req = createRequire(path.join(process.cwd(), "noop.js"));
    opcua = req("node-opcua");
    opcuaVersion = req("node-opcua/package.json").version;
}
const {
    OPCUAClient, OPCUACertificateManager, MessageSecurityMode, SecurityPolicy, UserTokenType, AttributeIds,
    ClientSubscription, ClientMonitoredItem, TimestampsToReturn, constructEventFilter, makeBrowsePath, Variant,
    DataType, VariantArrayType, StatusCodes, coerceNodeId, sameNodeId,
} = opcua;

const MV_NS = "http://opcfoundation.org/UA/MachineVision";
const ST_NS = "urn:inspection-station:opcua";

// -- arguments -------------------------------------------------------------------------------------------------
const argv = process.argv.slice(2);
const opts = { db: null, python: "python3", pki: path.join(os.tmpdir(), "opcua-node-check-pki"), json: null };
const positional = [];
for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
        const key = a.slice(2);
        if (!(key in opts) || i + 1 >= argv.length) usage(`unknown or incomplete option ${a}`);
        opts[key] = argv[++i];
    } else positional.push(a);
}
if (positional.length !== 3) usage("expected ENDPOINT USER PASSWORD");
const [endpointUrl, user, password] = positional;
const host = new URL(endpointUrl.replace(/^opc\.tcp:/, "http:")).hostname.replace(/^\[|\]$/g, "");
const port = Number(new URL(endpointUrl.replace(/^opc\.tcp:/, "http:")).port || 4840);

function usage(msg) {
    console.error(`${msg}\nusage: node opcua_node_check.mjs opc.tcp://HOST:PORT USER PASSWORD [--db LEDGER] ` +
                  "[--python PY] [--pki DIR] [--json OUT]");
    process.exit(2);
}

// -- reporting -------------------------------------------------------------------------------------------------
const results = [];   // {point, name, ok, detail}
const facts = {};
function check(point, name, ok, detail = "") {
    results.push({ point, name, ok: !!ok, detail: String(detail) });
    console.log(`${ok ? "PASS" : "FAIL"} [${point}] ${name}${detail !== "" ? `: ${detail}` : ""}`);
    return !!ok;
}
function note(text) { console.log(`     ${text}`); }
const show = (v) => JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? x.toString() : x));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const statusName = (s) => (s && s.name) || String(s);

// -- node-opcua helpers ----------------------------------------------------------------------------------------
async function certificateManager() {
    const cm = new OPCUACertificateManager({ rootFolder: opts.pki, automaticallyAcceptUnknownCertificate: true,
                                             disableFileWatchers: true });
    await cm.initialize();
    return cm;
}

function newClient(cm, mode, policy) {
    return OPCUAClient.create({
        applicationName: "node-opcua PLC check", endpointMustExist: false, securityMode: mode,
        securityPolicy: policy, clientCertificateManager: cm, keepSessionAlive: true,
        connectionStrategy: { maxRetry: 1, initialDelay: 500, maxDelay: 1000 }, requestedSessionTimeout: 120000,
        defaultTransactionTimeout: 60000,
    });
}

class Plc {
    constructor(session) { this.session = session; }

    async setup() {
        const ns = await this.session.readNamespaceArray();
        this.mv = ns.indexOf(MV_NS);
        this.st = ns.indexOf(ST_NS);
        if (this.mv < 0 || this.st < 0) throw new Error(`namespaces missing: ${show(ns)}`);
        const mv = this.mv, st = this.st;
        this.vision = await this.node("i=85", `/${st}:VisionSystem`);
        this.vsm = await this.node(this.vision, `/${mv}:VisionStateMachine`);
        this.auto = await this.node(this.vsm, `/${mv}:AutomaticModeStateMachine`);
        this.recipes = await this.node(this.vision, `/${mv}:RecipeManagement`);
        this.results = await this.node(this.vision, `/${mv}:ResultManagement`);
        this.lastResult = await this.node(this.results, `/${mv}:Results/${st}:LastResult`);
        return this;
    }

    async node(start, relative) {
        const result = await this.session.translateBrowsePath(makeBrowsePath(start, relative));
        if (!result.statusCode.equals(StatusCodes.Good) || !result.targets?.length)
            throw new Error(`browse path ${start} ${relative}: ${statusName(result.statusCode)}`);
        return result.targets[0].targetId.toString();
    }

    async read(nodeId) {
        const dv = await this.session.read({ nodeId, attributeId: AttributeIds.Value });
        if (!dv.statusCode.equals(StatusCodes.Good)) throw new Error(`read ${nodeId}: ${statusName(dv.statusCode)}`);
        return dv.value.value;
    }

    async readAt(start, relative) { return this.read(await this.node(start, relative)); }

    /** The browse name of a DataType node, e.g. "JobIdDataType" or "String". */
    async typeName(dataType) {
        const dv = await this.session.read({ nodeId: dataType, attributeId: AttributeIds.BrowseName });
        return dv.value.value?.name ?? dataType.toString();
    }
    async topState() { return (await this.readAt(this.vsm, "/0:CurrentState")).text; }
    async autoState() { return (await this.readAt(this.auto, "/0:CurrentState")).text; }
    async station(name) { return this.readAt(this.vision, `/${this.st}:Station/${this.st}:${name}`); }
    async lastPart(name) { return this.readAt(this.vision, `/${this.st}:LastPart/${this.st}:${name}`); }

    /** Call `name` on `parent` with arguments built from its InputArguments: `values[argName]` (a string for an
     *  Id structure, else the value); arguments not given get an empty Id structure / empty array / zero. */
    async call(parent, name, values = {}) {
        const methodId = await this.node(parent, `/${this.mv}:${name}`);
        const { inputArguments, outputArguments } = await this.session.getArgumentDefinition(coerceNodeId(methodId));
        const args = [];
        for (const arg of inputArguments) args.push(await this.argument(arg, values[arg.name]));
        let result;
        try {
            result = await this.session.call({ objectId: parent, methodId, inputArguments: args });
        } catch (err) {   // refused as a whole (a service result), not per method: the same to a PLC
            const status = err.response?.responseHeader?.serviceResult ??
                StatusCodes[/serviceResult = (\w+)/.exec(err.message)?.[1]];
            if (!status) throw err;
            return { status, out: [], outTypes: [], serviceResult: true };
        }
        return { status: result.statusCode, out: (result.outputArguments || []).map((v) => v.value),
                 outTypes: (result.outputArguments || []).map((v) => DataType[v.dataType]),
                 declared: (outputArguments || []).map((a) => ({ name: a.name, dataType: a.dataType })) };
    }

    async argument(arg, value) {
        const type = arg.dataType;
        if (arg.valueRank === 1)
            return new Variant({ dataType: DataType.Variant, arrayType: VariantArrayType.Array, value: value ?? [] });
        if (type.namespace === 0 && type.value <= 25)   // a built-in type
            return new Variant({ dataType: type.value, value: value ?? (type.value === DataType.String ? "" : 0) });
        // a MachineVision structure (…IdDataType): built by the server's DataTypeDefinition
        const body = typeof value === "object" && value !== null ? value : { id: value ?? "" };
        const eo = await this.session.constructExtensionObject(type, body);
        return new Variant({ dataType: DataType.ExtensionObject, value: eo });
    }
}

const idOf = (v) => (v === null || v === undefined ? v : typeof v === "object" && "id" in v ? v.id : v);
const typeOf = (v) => (v === null || v === undefined ? String(v) : v.constructor?.name || typeof v);

// -- 1. BuildInfo, anonymous, on the None endpoint -------------------------------------------------------------
async function pointBuildInfo(cm) {
    const client = newClient(cm, MessageSecurityMode.None, SecurityPolicy.None);
    await client.connect(endpointUrl);
    try {
        const endpoints = await client.getEndpoints();
        facts.endpoints = endpoints.map((e) => `${MessageSecurityMode[e.securityMode]} ${e.securityPolicyUri.split("#")[1]}`);
        const app = endpoints[0].server;
        const session = await client.createSession();
        try {
            const b = (await session.read({ nodeId: "i=2260", attributeId: AttributeIds.Value })).value.value;
            facts.buildInfo = { productName: b.productName, manufacturerName: b.manufacturerName,
                                softwareVersion: b.softwareVersion, buildNumber: b.buildNumber,
                                productUri: b.productUri, buildDate: b.buildDate?.toISOString?.() };
            facts.application = { applicationName: app.applicationName.text, applicationUri: app.applicationUri,
                                  productUri: app.productUri };
            note(`BuildInfo ${show(facts.buildInfo)}`);
            note(`application ${show(facts.application)}`);
            const all = Object.values(facts.buildInfo).concat(Object.values(facts.application)).join(" ");
            check(1, "BuildInfo is not asyncua's", !/FreeOpcUa|asyncua/i.test(all), b.productName);
            check(1, "ProductName and ManufacturerName given", b.productName === "inspection-station" &&
                  !!b.manufacturerName, `${b.productName} / ${b.manufacturerName}`);
            check(1, "ProductUri given, the same in the application description", !!b.productUri &&
                  b.productUri === app.productUri, `${b.productUri} / ${app.productUri}`);
            let expected = null;
            try {
                expected = execFileSync(opts.python, ["-c",
                    "import importlib.metadata as m; print(m.version('inspection-station'))"],
                    { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
            } catch { /* no interpreter with the package: version only checked to be set */ }
            check(1, "SoftwareVersion is the installed package's", !!b.softwareVersion &&
                  b.softwareVersion !== "0+unknown" && (expected === null || b.softwareVersion === expected),
                  `${b.softwareVersion}${expected !== null ? ` (package ${expected})` : ""}`);
            facts.stationVersion = b.softwareVersion;

            // 3a. an anonymous session may read, but not call (the PLC sequence's first rule)
            const plc = await new Plc(session).setup();
            facts.activeRecipe = await plc.station("ActiveRecipe");
            const prepare = await plc.call(plc.recipes, "PrepareRecipe", { ExternalId: facts.activeRecipe });
            const start = await plc.call(plc.auto, "StartSingleJob", { MeasId: "anon" });
            const halt = await plc.call(plc.vsm, "Halt", {});
            check(3, "anonymous calls refused (PrepareRecipe, StartSingleJob, Halt on None)",
                  [prepare, start, halt].every((r) => r.status.equals(StatusCodes.BadUserAccessDenied)),
                  [prepare, start, halt].map((r) => statusName(r.status)).join(", "));
            check(3, "anonymous reads allowed", (await plc.autoState()) !== undefined, await plc.autoState());
        } finally {
            await session.close();
        }
    } finally {
        await client.disconnect();
    }
}

// -- 2.-5. the PLC on SignAndEncrypt ---------------------------------------------------------------------------
async function pointsSecure(cm) {
    const client = newClient(cm, MessageSecurityMode.SignAndEncrypt, SecurityPolicy.Basic256Sha256);
    let connected = false;
    client.on("connection_lost", () => note("connection lost"));
    await client.connect(endpointUrl);
    connected = true;
    try {
        // 2. the secure channel and the server's certificate
        check(2, "connected with SignAndEncrypt / Basic256Sha256",
              client.securityMode === MessageSecurityMode.SignAndEncrypt &&
              String(client.securityPolicy).endsWith("Basic256Sha256"),
              `${MessageSecurityMode[client.securityMode]} ${client.securityPolicy}`);
        let der = client.serverCertificate;
        if (Array.isArray(der)) der = der[0];
        if (!der) {
            const eps = await client.getEndpoints();
            der = eps.find((e) => e.securityMode === MessageSecurityMode.SignAndEncrypt).serverCertificate;
        }
        const cert = new X509Certificate(der);
        const san = cert.subjectAltName || "";
        facts.certificate = { subject: cert.subject, subjectAltName: san, validFrom: cert.validFrom,
                              validTo: cert.validTo, fingerprint256: cert.fingerprint256 };
        note(`server certificate ${show(facts.certificate)}`);
        const entries = san.split(/,\s*/);
        const wanted = (net.isIP(host) ? `IP Address:${host}` : `DNS:${host}`).toLowerCase();
        check(2, `SAN holds the host connected to (${host})`, entries.some((e) => e.toLowerCase() === wanted), wanted);
        check(2, "SAN holds the application URI", entries.some((e) => e === `URI:${facts.application?.applicationUri}`),
              facts.application?.applicationUri);
        const notBefore = new Date(cert.validFrom), notAfter = new Date(cert.validTo);
        const backHours = (Date.now() - notBefore) / 3.6e6;
        const spanDays = (notAfter - notBefore) / 8.64e7;
        // made at T: notBefore = T - 1 day, notAfter = T + 365 days; so the span is 366 days, and now - notBefore
        // is at least a day (more when the certificate was made before today's start)
        check(2, "notBefore about a day back (validity: a day before it was made + a year)",
              backHours >= 23.5 && Math.abs(spanDays - 366) < 0.05,
              `notBefore ${notBefore.toISOString()} (${backHours.toFixed(2)} h ago), span ${spanDays.toFixed(3)} days`);

        // 3. the PLC sequence on a logged-in session
        const session = await client.createSession({ type: UserTokenType.UserName, userName: user, password });
        const plc = await new Plc(session).setup();
        const events = [];
        const waiters = [];
        const sub = ClientSubscription.create(session, {
            requestedPublishingInterval: 20, requestedLifetimeCount: 6000, requestedMaxKeepAliveCount: 20,
            maxNotificationsPerPublish: 100, publishingEnabled: true, priority: 10 });
        await new Promise((resolve, reject) => { sub.once("started", resolve); sub.once("internal_error", reject); });
        const fields = ["EventType", "Message", ...["ResultId", "JobId", "PartId", "MeasId", "ProductId", "ResultState",
                        "ResultContent", "IsSimulated", "CreationTime"].map((f) => `${plc.mv}:${f}`)];
        const names = fields.map((f) => f.split(":").pop());
        const resultReady = coerceNodeId(`ns=${plc.mv};i=1024`);   // ResultReadyEventType
        const item = ClientMonitoredItem.create(sub, { nodeId: "i=2253", attributeId: AttributeIds.EventNotifier },
            { samplingInterval: 0, filter: constructEventFilter(fields), queueSize: 1000, discardOldest: false },
            TimestampsToReturn.Neither);
        item.on("changed", (values) => {
            if (process.env.NODE_CHECK_DEBUG) note(`event ${values.map((v) => v.toString()).join(" | ")}`);
            const e = Object.fromEntries(names.map((n, i) => [n, values[i].value]));
            e.types = Object.fromEntries(names.map((n, i) => [n, DataType[values[i].dataType]]));
            if (!e.EventType || !sameNodeId(e.EventType, resultReady)) return;
            events.push(e);
            for (const w of waiters.splice(0)) w();
        });
        await new Promise((resolve) => item.once("initialized", resolve));
        async function resultFor(job, ms = 120000) {
            const deadline = Date.now() + ms;
            for (;;) {
                const e = events.find((x) => idOf(x.JobId) === job);
                if (e) return e;
                if (Date.now() > deadline) throw new Error(`no ResultReady for job ${job} in ${ms} ms`);
                await new Promise((r) => { waiters.push(r); setTimeout(r, 500); });
            }
        }

        const prepare = await plc.call(plc.recipes, "PrepareRecipe", { ExternalId: facts.activeRecipe });
        check(3, `PrepareRecipe("${facts.activeRecipe}") after login`, prepare.status.equals(StatusCodes.Good) &&
              prepare.out[2] === 0, `${statusName(prepare.status)}, IsCompleted ${prepare.out[1]}, Error ${prepare.out[2]}`);
        let state = await plc.autoState();
        for (let i = 0; i < 100 && state !== "Ready"; i++) { await sleep(100); state = await plc.autoState(); }
        check(3, "Ready after PrepareRecipe", state === "Ready", state);

        const jobs = [];
        async function singleJob(ids) {
            const call = await plc.call(plc.auto, "StartSingleJob", ids);
            facts.startSingleJobOutputTypes = call.outTypes;
            const job = idOf(call.out[0]);
            const ok = call.status.equals(StatusCodes.Good) && call.out[1] === 0 && !!job;
            check(3, `StartSingleJob(${show(ids)}) returns a JobId`, ok,
                  `${statusName(call.status)}, JobId ${show(job)} (${call.outTypes[0]}, ${typeOf(call.out[0])}), ` +
                  `Error ${call.out[1]}`);
            if (!ok) throw new Error("StartSingleJob failed");
            const event = await resultFor(job);
            // GetResultById with the ResultId the event gave, typed as the method declares it (ResultIdDataType)
            const byId = await plc.call(plc.results, "GetResultById", { ResultId: idOf(event.ResultId), Timeout: 0 });
            const last = await plc.read(plc.lastResult);
            const rowId = await plc.lastPart("RowId");   // Int64: node-opcua gives [high, low]
            const part = { PartId: await plc.lastPart("PartId"), MeasId: await plc.lastPart("MeasId"),
                           JobId: await plc.lastPart("JobId"),
                           RowId: Array.isArray(rowId) ? rowId[0] * 2 ** 32 + rowId[1] : Number(rowId),
                           Verdict: await plc.lastPart("Verdict") };
            const r = { ids, job, event: { ResultId: idOf(event.ResultId), JobId: idOf(event.JobId),
                                            PartId: idOf(event.PartId), MeasId: idOf(event.MeasId),
                                            ProductId: idOf(event.ProductId), verdict: event.ResultContent?.[0]?.value,
                                            types: event.types },
                        getResultById: { status: statusName(byId.status), error: byId.out[2],
                                         ...(byId.out[1] ? { ResultId: idOf(byId.out[1].resultId),
                                             JobId: idOf(byId.out[1].jobId), PartId: idOf(byId.out[1].partId),
                                             MeasId: idOf(byId.out[1].measId), ProductId: idOf(byId.out[1].productId) }
                                             : {}) },
                        lastResult: { ResultId: idOf(last?.resultId), JobId: idOf(last?.jobId),
                                      PartId: idOf(last?.partId), MeasId: idOf(last?.measId),
                                      ProductId: idOf(last?.productId) },
                        lastPart: part };
            note(`ResultReady ${show(r.event)}`);
            note(`GetResultById ${show(r.getResultById)}`);
            note(`LastResult ${show(r.lastResult)}  LastPart ${show(part)}`);
            const want = (x) => x.PartId === ids.PartId && x.MeasId === ids.MeasId && x.JobId === job &&
                                (!ids.ProductId || x.ProductId === ids.ProductId);
            check(3, "ResultReady carries PartId, MeasId, ProductId, JobId", want(r.event), show(r.event));
            check(3, "GetResultById(ResultIdDataType) answers the same ids",
                  byId.status.equals(StatusCodes.Good) && byId.out[2] === 0 && want(r.getResultById) &&
                  r.getResultById.ResultId === r.event.ResultId, show(r.getResultById));
            if (!byId.status.equals(StatusCodes.Good)) {   // what the station does take, to say what is wrong
                const plain = await plc.session.call({ objectId: plc.results,
                    methodId: await plc.node(plc.results, `/${plc.mv}:GetResultById`),
                    inputArguments: [new Variant({ dataType: DataType.String, value: String(r.event.ResultId) }),
                                     new Variant({ dataType: DataType.Int32, value: 0 })] });
                note(`GetResultById with a plain String ResultId instead: ${statusName(plain.statusCode)}`);
            }
            check(3, "LastResult answers the same ids", want(r.lastResult) && r.lastResult.ResultId === r.event.ResultId,
                  show(r.lastResult));
            check(3, "LastPart answers the same ids", part.PartId === ids.PartId && part.MeasId === ids.MeasId &&
                  part.JobId === job && String(part.RowId) === String(r.event.ResultId), show(part));
            jobs.push(r);
            if (jobs.length === 1) {   // what types came, against what the NodeSet declares (noted, not judged)
                const notes = [];
                for (const [i, arg] of (call.declared || []).entries()) {
                    notes.push([`StartSingleJob output ${arg.name}`, await plc.typeName(arg.dataType), call.outTypes[i]]);
                }
                const eventType = `ns=${plc.mv};i=1024`;
                for (const f of ["ResultId", "JobId", "PartId", "MeasId", "ProductId"]) {
                    const prop = await plc.node(eventType, `/${plc.mv}:${f}`);
                    const dv = await plc.session.read({ nodeId: prop, attributeId: AttributeIds.DataType });
                    notes.push([`ResultReady ${f}`, await plc.typeName(dv.value.value), event.types[f]]);
                }
                facts.declaredVsSent = notes.map(([what, declared, sent]) => ({ what, declared, sent }));
                for (const [what, declared, sent] of notes) {
                    const same = declared === sent || (sent === "ExtensionObject" && declared.endsWith("DataType"));
                    if (!same) note(`NOTE ${what}: the NodeSet declares ${declared}, the server sends ${sent}`);
                }
            }
            return r;
        }
        await singleJob({ MeasId: "M-1", PartId: "P-1", ProductId: "X-7" });

        // 4. a second session on this secure channel whose login fails; the first one works on
        let second = "created";
        try {
            const bad = await client.createSession({ type: UserTokenType.UserName, userName: user,
                                                     password: `${password}-wrong` });
            second = "ACCEPTED";
            await bad.close().catch(() => {});
        } catch (err) {
            second = String(err.message || err).split("\n")[0];
        }
        check(4, "a second session with a wrong password refused", second !== "ACCEPTED" && second !== "created",
              second);
        const sameChannel = client._secureChannel ? "one secure channel (client._secureChannel)" : "";
        let works = true, why = sameChannel;
        try {
            works = (await plc.autoState()) === "Ready" && (await plc.station("StationId")) !== undefined;
            why += `; state ${await plc.autoState()}`;
        } catch (err) { works = false; why += `; read: ${err.message}`; }
        check(4, "the first session still reads", works, why);
        // an anonymous second session on the channel: it may not call, and the first may (as itself)
        const anon = await client.createSession();
        const anonPlc = await new Plc(anon).setup();
        const anonCall = await anonPlc.call(anonPlc.auto, "StartSingleJob", { MeasId: "anon-2" });
        check(4, "an anonymous second session on the channel may not call",
              anonCall.status.equals(StatusCodes.BadUserAccessDenied), statusName(anonCall.status));
        await singleJob({ MeasId: "M-2", PartId: "P-2", ProductId: "X-7" });
        check(4, "the first session calls methods and gets its events after both", true,
              "StartSingleJob M-2 → ResultReady on its subscription");
        await anon.close();

        // 5. Halt: Halted read while connected; the server stays up until the client goes
        facts.runId = await plc.station("RunId");
        facts.stationId = await plc.station("StationId");
        const halt = await plc.call(plc.vsm, "Halt", { Cause: 0, CauseDescription: "node-opcua check" });
        check(5, "Halt accepted", halt.status.equals(StatusCodes.Good) && halt.out[0] === 0,
              `${statusName(halt.status)}, Error ${halt.out[0]}`);
        let top = await plc.topState();
        for (let i = 0; i < 100 && top !== "Halted"; i++) { await sleep(100); top = await plc.topState(); }
        check(5, "VisionStateMachine reads Halted while connected", top === "Halted", top);
        await sleep(3000);   // the run drains and ends meanwhile; the server must still answer this client
        let later;
        try { later = await plc.topState(); } catch (err) { later = `error: ${err.message}`; }
        check(5, "still connected and Halted 3 s later", later === "Halted", later);
        await sub.terminate().catch(() => {});
        await session.close();
        facts.events = events.length;
        facts.jobs = jobs;
    } finally {
        if (connected) await client.disconnect();
    }
    // the station stops serving once its PLC has gone (docs: at most halt_timeout_s)
    const t0 = Date.now();
    let gone = false;
    while (Date.now() - t0 < 40000 && !gone) {
        gone = await new Promise((resolve) => {
            const s = net.connect({ host, port }, () => { s.destroy(); resolve(false); });
            s.on("error", () => resolve(true));
        });
        if (!gone) await sleep(250);
    }
    check(5, "the server stops after the client disconnected", gone,
          gone ? `${((Date.now() - t0) / 1000).toFixed(1)} s after the disconnect` : "still listening after 40 s");
}

// -- the ledger, after the run ---------------------------------------------------------------------------------
function pointLedger() {
    if (!opts.db) { note("no --db: the ledger comparison is left out"); return; }
    const code = `
import json, sqlite3, sys, time
for _ in range(120):   # the station closes the ledger as it exits
    try:
        con = sqlite3.connect(sys.argv[1], timeout=30); con.row_factory = sqlite3.Row
        rows = [dict(r) for r in con.execute("SELECT id, run_id, verdict, part_id, meas_id, product_id, job_id FROM inspections WHERE run_id = ? ORDER BY id", (sys.argv[2],))]
        break
    except sqlite3.OperationalError:
        time.sleep(0.5)
print(json.dumps(rows))`;
    const rows = JSON.parse(execFileSync(opts.python, ["-c", code, opts.db, facts.runId], { encoding: "utf8" }));
    note(`ledger rows of run ${facts.runId}: ${show(rows)}`);
    check(3, "one ResultReady per ledger row of the run", rows.length === facts.events,
          `${facts.events} events, ${rows.length} rows`);
    for (const j of facts.jobs || []) {
        const row = rows.find((r) => String(r.id) === String(j.event.ResultId));
        check(3, `ledger row ${j.event.ResultId} equals what the PLC got (${j.ids.MeasId})`, row &&
              row.part_id === j.event.PartId && row.meas_id === j.event.MeasId && row.job_id === j.job &&
              row.product_id === j.event.ProductId, show(row));
    }
}

// -- main ------------------------------------------------------------------------------------------------------
const started = new Date();
console.log(`node-opcua ${opcuaVersion}, node ${process.version}; endpoint ${endpointUrl}; ${started.toISOString()}`);
let crashed = null;
try {
    const cm = await certificateManager();
    await pointBuildInfo(cm);
    await pointsSecure(cm);
    pointLedger();
} catch (err) {
    crashed = err;
    check("-", "the check ran to its end", false, err.stack || err);
}
const failed = results.filter((r) => !r.ok);
const byPoint = {};
for (const r of results) byPoint[r.point] = (byPoint[r.point] ?? true) && r.ok;
console.log(`station ${facts.stationVersion ?? "?"} (${facts.stationId ?? "?"}), node-opcua ${opcuaVersion}: ` +
            Object.entries(byPoint).map(([p, ok]) => `${p} ${ok ? "pass" : "FAIL"}`).join(", ") +
            ` (${results.length - failed.length}/${results.length} checks passed)`);
if (opts.json) {
    fs.writeFileSync(opts.json, JSON.stringify({ started, endpointUrl, nodeOpcua: opcuaVersion, node: process.version,
                                                 facts, results },
                                               (_k, x) => (typeof x === "bigint" ? x.toString() : x), 2));
}
process.exit(failed.length || crashed ? 1 : 0);
