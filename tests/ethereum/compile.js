// Compiles a Solidity file with solcjs (the npm `solc` package, pinned in package.json) and
// prints {"contracts": {name: {"abi": [...], "bytecode": "0x..."}}, "version": "..."} as JSON.
// Usage: node compile.js FILE.sol
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const file = process.argv[2];
if (!file) {
  console.error("usage: node compile.js FILE.sol");
  process.exit(2);
}
const input = {
  language: "Solidity",
  sources: { [path.basename(file)]: { content: fs.readFileSync(file, "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length > 0) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}
const contracts = {};
for (const source of Object.values(output.contracts)) {
  for (const [name, contract] of Object.entries(source)) {
    contracts[name] = { abi: contract.abi, bytecode: "0x" + contract.evm.bytecode.object };
  }
}
process.stdout.write(JSON.stringify({ version: solc.version(), contracts }));
