// The actions of the default constitution: for each, its argument schema, optional extra
// checks at validation time, and what applying it writes.

/** Sets or clears an optional field of a record (null or undefined clears it). */
function setOptional(record, field, value) {
  if (value === undefined || value === null) {
    delete record[field];
  } else {
    record[field] = value;
  }
}

function recoveryThreshold() {
  const config = readRecord(SERVICE_CONFIG_MAP, SERVICE_CONFIG_KEY);
  return config === undefined ? 0 : config.recovery_threshold;
}

function memberCount() {
  return allRecords(MEMBERS_MAP).length;
}

const ACTIONS = new Map([
  [
    "set_member",
    {
      args: { cert: "pem", member_data: "json?", encryption_pub_key: "string?" },
      apply(args) {
        const id = ccf.crypto.pemToId(args.cert);
        const existing = readRecord(MEMBERS_MAP, id);
        // A new member starts Accepted and becomes Active when it acknowledges; setting an
        // existing member again keeps its status.
        const info = {
          cert: args.cert,
          status: existing === undefined ? "Accepted" : existing.status,
        };
        setOptional(info, "member_data", args.member_data);
        setOptional(info, "public_encryption_key", args.encryption_pub_key);
        writeRecord(MEMBERS_MAP, id, info);
      },
    },
  ],
  [
    "remove_member",
    {
      args: { member_id: "id" },
      apply(args) {
        const existing = readRecord(MEMBERS_MAP, args.member_id);
        if (existing === undefined) {
          return;
        }
        const remaining = memberCount() - 1;
        if (remaining < recoveryThreshold()) {
          throw new Error(
            `removing member ${args.member_id} would leave ${remaining} members, fewer than ` +
              `the recovery threshold of ${recoveryThreshold()}`
          );
        }
        if (existing.status === "Active" && activeMemberIds().length === 1) {
          throw new Error(`member ${args.member_id} is the last active member`);
        }
        removeRecord(MEMBERS_MAP, args.member_id);
      },
    },
  ],
  [
    "set_member_data",
    {
      args: { member_id: "id", member_data: "json" },
      apply(args) {
        const info = readRecord(MEMBERS_MAP, args.member_id);
        if (info === undefined) {
          throw new Error(`member ${args.member_id} does not exist`);
        }
        setOptional(info, "member_data", args.member_data);
        writeRecord(MEMBERS_MAP, args.member_id, info);
      },
    },
  ],
  [
    "set_user",
    {
      args: { cert: "pem", user_data: "json?" },
      apply(args) {
        const info = { cert: args.cert };
        setOptional(info, "user_data", args.user_data);
        writeRecord(USERS_MAP, ccf.crypto.pemToId(args.cert), info);
      },
    },
  ],
  [
    "remove_user",
    {
      args: { user_id: "id" },
      apply(args) {
        removeRecord(USERS_MAP, args.user_id);
      },
    },
  ],
  [
    "set_user_data",
    {
      args: { user_id: "id", user_data: "json" },
      apply(args) {
        const info = readRecord(USERS_MAP, args.user_id);
        if (info === undefined) {
          throw new Error(`user ${args.user_id} does not exist`);
        }
        setOptional(info, "user_data", args.user_data);
        writeRecord(USERS_MAP, args.user_id, info);
      },
    },
  ],
  [
    "transition_node_to_trusted",
    {
      args: { node_id: "id" },
      apply(args) {
        const node = readRecord(NODES_MAP, args.node_id);
        if (node === undefined) {
          throw new Error(`node ${args.node_id} does not exist`);
        }
        if (node.status === "Retired") {
          throw new Error(`node ${args.node_id} is retired`);
        }
        node.status = "Trusted";
        writeRecord(NODES_MAP, args.node_id, node);
      },
    },
  ],
  [
    "remove_node",
    {
      args: { node_id: "id" },
      apply(args) {
        const node = readRecord(NODES_MAP, args.node_id);
        if (node === undefined) {
          return;
        }
        node.status = "Retired";
        writeRecord(NODES_MAP, args.node_id, node);
      },
    },
  ],
  [
    "add_snp_measurement",
    {
      args: { measurement: "hex" },
      apply(args) {
        writeRecord(CODE_MANIFEST_MAP, args.measurement, { status: "AllowedToJoin" });
      },
    },
  ],
  [
    "remove_snp_measurement",
    {
      args: { measurement: "hex" },
      apply(args) {
        removeRecord(CODE_MANIFEST_MAP, args.measurement);
      },
    },
  ],
  [
    "add_snp_host_data",
    {
      args: { host_data: "hex", metadata: "json?" },
      apply(args) {
        const metadata = args.metadata === undefined || args.metadata === null ? "" : args.metadata;
        writeRecord(HOST_DATA_MAP, args.host_data, { metadata });
      },
    },
  ],
  [
    "remove_snp_host_data",
    {
      args: { host_data: "hex" },
      apply(args) {
        removeRecord(HOST_DATA_MAP, args.host_data);
      },
    },
  ],
  [
    "add_platform",
    {
      args: { platform: "platform" },
      apply(args) {
        writeRecord(TEE_MANIFEST_MAP, args.platform, { status: "Allowed" });
      },
    },
  ],
  [
    "remove_platform",
    {
      args: { platform: "platform" },
      apply(args) {
        removeRecord(TEE_MANIFEST_MAP, args.platform);
      },
    },
  ],
  [
    "set_constitution",
    {
      args: { constitution: "source" },
      apply(args) {
        // Raw source, not JSON.
        ccf.kv[CONSTITUTION_MAP].set(
          ccf.strToBuf(CONSTITUTION_KEY),
          ccf.strToBuf(args.constitution)
        );
      },
    },
  ],
  [
    "set_recovery_threshold",
    {
      args: { recovery_threshold: "positive" },
      apply(args) {
        const members = memberCount();
        if (args.recovery_threshold > members) {
          throw new Error(
            `recovery_threshold ${args.recovery_threshold} is above the number of members ` +
              `(${members})`
          );
        }
        const config = readRecord(SERVICE_CONFIG_MAP, SERVICE_CONFIG_KEY) ?? {};
        config.recovery_threshold = args.recovery_threshold;
        writeRecord(SERVICE_CONFIG_MAP, SERVICE_CONFIG_KEY, config);
      },
    },
  ],
  [
    "trigger_ledger_rekey",
    {
      args: {},
      apply() {
        // The primary's core sees the request in the same transaction and replaces it with a
        // fresh ledger secret, wrapped for every trusted node.
        writeRecord(LEDGER_REKEY_MAP, LEDGER_REKEY_KEY, { requested: true });
      },
    },
  ],
  [
    "transition_service_to_open",
    {
      // CCF clients may pass the service identities; Charter does not need them.
      args: { next_service_identity: "string?", previous_service_identity: "string?" },
      apply() {
        const service = readRecord(SERVICE_MAP, SERVICE_KEY);
        if (service === undefined) {
          throw new Error("the service record does not exist");
        }
        if (service.status === "Opening") {
          service.status = "Open";
        } else if (service.status === "Recovering") {
          // A recovered service opens once members' recovery shares restore its private state.
          service.status = "WaitingForRecoveryShares";
        } else {
          throw new Error(`the service is ${service.status}, not Opening or Recovering`);
        }
        writeRecord(SERVICE_MAP, SERVICE_KEY, service);
      },
    },
  ],
  [
    "set_js_runtime_options",
    {
      args: { max_heap_bytes: "positive", max_stack_bytes: "positive", max_execution_fuel: "positive" },
      check(args) {
        const minimums = [
          ["max_heap_bytes", JS_HEAP_BYTES_MIN],
          ["max_stack_bytes", JS_STACK_BYTES_MIN],
          ["max_execution_fuel", JS_EXECUTION_FUEL_MIN],
        ];
        for (const [field, minimum] of minimums) {
          if (args[field] < minimum) {
            throw new ArgumentError(`${field} must be at least ${minimum}`);
          }
        }
      },
      apply(args) {
        writeRecord(JS_RUNTIME_OPTIONS_MAP, JS_RUNTIME_OPTIONS_KEY, {
          max_heap_bytes: args.max_heap_bytes,
          max_stack_bytes: args.max_stack_bytes,
          max_execution_fuel: args.max_execution_fuel,
        });
      },
    },
  ],
]);

/** The action definition for `action`, after checking its shape and arguments. */
function checkedAction(action, index) {
  const where = `actions[${index}]`;
  if (!isPlainObject(action)) {
    throw new ArgumentError(`${where} must be an object`);
  }
  for (const key of Object.keys(action)) {
    if (key !== "name" && key !== "args") {
      throw new ArgumentError(`${where} has an unexpected field ${JSON.stringify(key)}`);
    }
  }
  if (typeof action.name !== "string") {
    throw new ArgumentError(`${where} needs a string name`);
  }
  const definition = ACTIONS.get(action.name);
  if (definition === undefined) {
    throw new ArgumentError(`${where}: unknown action ${JSON.stringify(action.name)}`);
  }
  try {
    checkArgs(definition.args, action.args);
    if (definition.check !== undefined) {
      definition.check(action.args);
    }
  } catch (error) {
    if (error instanceof ArgumentError) {
      throw new ArgumentError(`${where} (${action.name}): ${error.message}`);
    }
    throw error;
  }
  return definition;
}

/** The checked actions of a proposal body (a JSON string). */
function checkedProposal(input) {
  let proposal;
  try {
    proposal = JSON.parse(input);
  } catch (error) {
    throw new ArgumentError("the proposal is not valid JSON");
  }
  if (!isPlainObject(proposal)) {
    throw new ArgumentError("the proposal must be an object");
  }
  for (const key of Object.keys(proposal)) {
    if (key !== "actions") {
      throw new ArgumentError(`the proposal has an unexpected field ${JSON.stringify(key)}`);
    }
  }
  if (!Array.isArray(proposal.actions)) {
    throw new ArgumentError("the proposal needs an actions array");
  }
  if (proposal.actions.length === 0) {
    throw new ArgumentError("the proposal needs at least one action");
  }
  return proposal.actions.map((action, index) => [
    checkedAction(action, index),
    action.args === undefined ? {} : action.args,
  ]);
}
