// Charter's default constitution. The Rust side concatenates the files of this directory, in
// the order common, actions, validate, resolve, apply, into one module.
//
// Governance maps and keys: the same names and record formats as crates/gov/src/tables.rs and
// crates/ledger/src/tables.rs.
const MEMBERS_MAP = "public:charter.gov.members";
const USERS_MAP = "public:charter.gov.users";
const CONSTITUTION_MAP = "public:charter.gov.constitution";
const CONSTITUTION_KEY = "constitution";
const CODE_MANIFEST_MAP = "public:charter.gov.code_manifest";
const HOST_DATA_MAP = "public:charter.gov.snp_host_data";
const TEE_MANIFEST_MAP = "public:charter.gov.tee_manifest";
const SERVICE_CONFIG_MAP = "public:charter.gov.service_config";
const SERVICE_CONFIG_KEY = "config";
const JS_RUNTIME_OPTIONS_MAP = "public:charter.gov.js_runtime_options";
const JS_RUNTIME_OPTIONS_KEY = "options";
const NODES_MAP = "public:charter.internal.nodes";
const SERVICE_MAP = "public:charter.gov.service_info";
const SERVICE_KEY = "service";
const LEDGER_REKEY_MAP = "public:charter.internal.ledger_rekey";
const LEDGER_REKEY_KEY = "request";

// Smallest runtime limits governance may set, so that a proposal cannot leave governance
// unable to run its own constitution.
const JS_HEAP_BYTES_MIN = 4 * 1024 * 1024;
const JS_STACK_BYTES_MIN = 256 * 1024;
const JS_EXECUTION_FUEL_MIN = 100;

/** The JSON record under `key` in `map`, or undefined. */
function readRecord(map, key) {
  const value = ccf.kv[map].get(ccf.strToBuf(key));
  return value === undefined ? undefined : ccf.bufToJsonCompatible(value);
}

/** Writes `record` as JSON under `key` in `map`. */
function writeRecord(map, key, record) {
  ccf.kv[map].set(ccf.strToBuf(key), ccf.jsonCompatibleToBuf(record));
}

/** Removes `key` from `map`. */
function removeRecord(map, key) {
  ccf.kv[map].delete(ccf.strToBuf(key));
}

/** Every record of `map`, as [key, record] pairs in key order. */
function allRecords(map) {
  const records = [];
  ccf.kv[map].forEach((value, key) => {
    records.push([ccf.bufToStr(key), ccf.bufToJsonCompatible(value)]);
  });
  return records;
}

/** The IDs of the members whose status is Active. */
function activeMemberIds() {
  return allRecords(MEMBERS_MAP)
    .filter(([, info]) => info.status === "Active")
    .map(([id]) => id);
}

/** A proposal whose arguments do not fit the action; validate reports its message. */
class ArgumentError extends Error {}

function isPlainObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// Argument types. Each takes a value and returns a problem description, or undefined if the
// value is fine.
// The sandbox has no RegExp (its engine cannot be interrupted), hence the loop.
function isLowerHex(value) {
  if (typeof value !== "string" || value.length === 0 || value.length % 2 !== 0) {
    return false;
  }
  for (const c of value) {
    if (!((c >= "0" && c <= "9") || (c >= "a" && c <= "f"))) {
      return false;
    }
  }
  return true;
}
const PLATFORMS = ["virtual", "sev-snp"];
const ARG_TYPES = {
  pem: (value) =>
    typeof value === "string" && ccf.crypto.isValidX509CertBundle(value)
      ? undefined
      : "must be a PEM certificate",
  id: (value) =>
    isLowerHex(value) && value.length === 64
      ? undefined
      : "must be an ID: 64 lower-case hex digits",
  hex: (value) =>
    isLowerHex(value)
      ? undefined
      : "must be a non-empty string of lower-case hex digit pairs",
  string: (value) => (typeof value === "string" ? undefined : "must be a string"),
  source: (value) =>
    typeof value === "string" && value.length > 0 ? undefined : "must be a non-empty string",
  json: (value) => (value !== undefined ? undefined : "must be present"),
  positive: (value) =>
    Number.isSafeInteger(value) && value >= 1 ? undefined : "must be an integer >= 1",
  platform: (value) =>
    PLATFORMS.includes(value) ? undefined : `must be one of ${PLATFORMS.join(", ")}`,
};

/**
 * Checks `args` against `schema` ({field: "type" or "type?"}), throwing ArgumentError.
 * Actions whose schema has no required field accept absent args.
 */
function checkArgs(schema, args) {
  const fields = Object.entries(schema);
  const required = fields.filter(([, type]) => !type.endsWith("?"));
  if (args === undefined && required.length === 0) {
    return;
  }
  if (!isPlainObject(args)) {
    throw new ArgumentError("args must be an object");
  }
  for (const key of Object.keys(args)) {
    if (!Object.prototype.hasOwnProperty.call(schema, key)) {
      throw new ArgumentError(`unexpected argument ${JSON.stringify(key)}`);
    }
  }
  for (const [field, type] of fields) {
    const optional = type.endsWith("?");
    const value = args[field];
    if (value === undefined || (optional && value === null)) {
      if (!optional) {
        throw new ArgumentError(`missing argument ${field}`);
      }
      continue;
    }
    const check = ARG_TYPES[optional ? type.slice(0, -1) : type];
    const problem = check(value);
    if (problem !== undefined) {
      throw new ArgumentError(`${field} ${problem}`);
    }
  }
}
