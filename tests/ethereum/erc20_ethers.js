// ethers v6 against Charter's Ethereum adapter: compiles tests/ethereum/ERC20.sol with solcjs,
// deploys it through a running Charter service, transfers tokens and ether, reads balances and
// Transfer events, gets receipts and blocks, and checks that another Charter user sees none of
// the sender's transactions. Prints a JSON summary on success; exits non-zero on any failure.
//
// Usage: node erc20_ethers.js --url https://127.0.0.1:8000/app/ethereum --ca service_cert.pem
//          --cert user0_cert.pem --key user0_privk.pem --other-cert user1_cert.pem
//          --other-key user1_privk.pem --owner-key 0x... --friend-key 0x...
"use strict";
const assert = require("assert");
const { execFileSync } = require("child_process");
const fs = require("fs");
const https = require("https");
const path = require("path");
const { ethers } = require("ethers");

const CHAIN_ID = 0x4348n;
const SUPPLY = 10n ** 24n;
const OVERALL_TIMEOUT_MS = 120_000;

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i];
    assert(name.startsWith("--") && i + 1 < argv.length, `bad argument ${name}`);
    args[name.slice(2)] = argv[i + 1];
  }
  for (const required of ["url", "ca", "cert", "key", "other-cert", "other-key", "owner-key", "friend-key"]) {
    assert(args[required], `--${required} is required`);
  }
  return args;
}

// A provider whose HTTPS requests present a Charter user's client certificate and trust only
// the service certificate.
function provider(args, certPath, keyPath) {
  const agent = new https.Agent({
    ca: fs.readFileSync(args.ca),
    cert: fs.readFileSync(certPath),
    key: fs.readFileSync(keyPath),
    keepAlive: true,
  });
  const request = new ethers.FetchRequest(args.url);
  request.getUrlFunc = ethers.FetchRequest.createGetUrlFunc({ agent });
  request.timeout = 30_000;
  const result = new ethers.JsonRpcProvider(request, Number(CHAIN_ID), {
    staticNetwork: true,
    pollingInterval: 50,
    // ethers shares identical requests made within 250 ms by default; a Charter block takes
    // milliseconds, so a nonce read just after a transaction would be the stale one.
    cacheTimeout: -1,
  });
  if (process.env.CHARTER_ETHERS_DEBUG) {
    result.on("debug", (event) => console.error(JSON.stringify(event, (_, v) => (typeof v === "bigint" ? String(v) : v))));
  }
  return result;
}

function compile() {
  const here = __dirname;
  const out = execFileSync(process.execPath, [path.join(here, "compile.js"), path.join(here, "ERC20.sol")], {
    maxBuffer: 64 << 20,
  });
  return JSON.parse(out).contracts.CharterToken;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const artifact = compile();
  const mine = provider(args, args.cert, args.key);
  const theirs = provider(args, args["other-cert"], args["other-key"]);
  const network = await mine.getNetwork();
  assert.strictEqual(network.chainId, CHAIN_ID);
  const owner = new ethers.Wallet(args["owner-key"], mine);
  const friend = new ethers.Wallet(args["friend-key"], mine);

  // Deploy: ethers fills the nonce, the gas (eth_estimateGas) and the EIP-1559 fees.
  const factory = new ethers.ContractFactory(artifact.abi, artifact.bytecode, owner);
  const token = await factory.deploy("Ethers Token", "ETK", SUPPLY);
  const deployTx = token.deploymentTransaction();
  const deployReceipt = await deployTx.wait(1, 30_000);
  assert.strictEqual(deployReceipt.status, 1);
  await token.waitForDeployment();
  const tokenAddress = await token.getAddress();
  assert.strictEqual(deployReceipt.contractAddress, tokenAddress);
  assert((await mine.getCode(tokenAddress)).length > 200);
  assert.strictEqual(await token.name(), "Ethers Token");
  assert.strictEqual(await token.symbol(), "ETK");
  assert.strictEqual(await token.balanceOf(owner.address), SUPPLY);

  // Transfer tokens; the receipt's logs decode to the Transfer event.
  const amount = 4321n * 10n ** 18n;
  const transferTx = await token.transfer(friend.address, amount);
  const transferReceipt = await transferTx.wait(1, 30_000);
  assert.strictEqual(transferReceipt.status, 1);
  assert.strictEqual(transferReceipt.logs.length, 1);
  const event = token.interface.parseLog(transferReceipt.logs[0]);
  assert.strictEqual(event.name, "Transfer");
  assert.strictEqual(event.args.from, owner.address);
  assert.strictEqual(event.args.to, friend.address);
  assert.strictEqual(event.args.value, amount);
  assert.strictEqual(await token.balanceOf(friend.address), amount);
  assert.strictEqual(await token.balanceOf(owner.address), SUPPLY - amount);

  // Events through eth_getLogs: the mint and the transfer, in order.
  const events = await token.queryFilter(token.filters.Transfer(), 0, "latest");
  assert.deepStrictEqual(
    events.map((e) => [e.args.from, e.args.to, e.args.value]),
    [
      [ethers.ZeroAddress, owner.address, SUPPLY],
      [owner.address, friend.address, amount],
    ],
  );
  const toFriend = await token.queryFilter(token.filters.Transfer(null, friend.address));
  assert.strictEqual(toFriend.length, 1);

  // An ether transfer (legacy type 0, then EIP-1559), with receipts and transactions read back.
  // ethers picks legacy transactions by itself here: it takes EIP-1559 fees only from a
  // non-zero base fee, and Charter's is zero. An EIP-1559 transaction names its fees.
  const before = await mine.getBalance(owner.address);
  const etherTx = await owner.sendTransaction({ to: friend.address, value: 12345n, type: 0 });
  const etherReceipt = await etherTx.wait(1, 30_000);
  assert.strictEqual(etherReceipt.status, 1);
  assert.strictEqual(etherReceipt.type, 0);
  const dynamicTx = await owner.sendTransaction({
    to: friend.address,
    value: 1n,
    type: 2,
    maxFeePerGas: 1n,
    maxPriorityFeePerGas: 1n,
  });
  const dynamicReceipt = await dynamicTx.wait(1, 30_000);
  assert.strictEqual(dynamicReceipt.type, 2);
  const spent = etherReceipt.gasUsed * etherReceipt.gasPrice + dynamicReceipt.gasUsed * dynamicReceipt.gasPrice;
  assert.strictEqual(await mine.getBalance(owner.address), before - 12346n - spent);
  const fetched = await mine.getTransactionReceipt(transferTx.hash);
  assert.strictEqual(fetched.blockHash, transferReceipt.blockHash);
  const transaction = await mine.getTransaction(transferTx.hash);
  assert.strictEqual(transaction.from, owner.address);
  assert.strictEqual(transaction.to, tokenAddress);
  assert.strictEqual(transaction.nonce, transferTx.nonce);

  // Blocks: one per transaction, numbered in order, with timestamps that never go back.
  const deployBlock = await mine.getBlock(deployReceipt.blockNumber);
  const transferBlock = await mine.getBlock(transferReceipt.blockNumber, true);
  assert(transferBlock.number > deployBlock.number);
  assert(transferBlock.timestamp >= deployBlock.timestamp);
  assert.deepStrictEqual(transferBlock.transactions, [transferTx.hash]);
  assert.strictEqual(transferBlock.parentHash, (await mine.getBlock(transferBlock.number - 1)).hash);

  // Another Charter user sees neither the receipt nor the transaction, and an empty block.
  assert.strictEqual(await theirs.getTransactionReceipt(transferTx.hash), null);
  assert.strictEqual(await theirs.getTransaction(transferTx.hash), null);
  const hidden = await theirs.getBlock(transferReceipt.blockNumber);
  assert.strictEqual(hidden.hash, transferBlock.hash);
  assert.deepStrictEqual(hidden.transactions, []);
  // ... nor the owner's balance, while the public contract answers everyone.
  assert.strictEqual(await theirs.getBalance(owner.address), 0n);
  const theirToken = new ethers.Contract(tokenAddress, artifact.abi, theirs);
  assert.strictEqual(await theirToken.symbol(), "ETK");

  mine.destroy();
  theirs.destroy();
  const summary = {
    ethers: ethers.version,
    token: tokenAddress,
    deploy: { hash: deployTx.hash, block: deployReceipt.blockNumber },
    transfer: {
      hash: transferTx.hash,
      block: transferReceipt.blockNumber,
      timestamp: transferBlock.timestamp,
      charterTransactionId: await charterTransactionId(args, transferTx.hash),
    },
    events: events.length,
  };
  process.stdout.write(JSON.stringify(summary));
}

// The Charter TxID of an Ethereum transaction: a field of Charter's receipts that ethers does
// not keep, so it is read with a plain JSON-RPC call.
async function charterTransactionId(args, hash) {
  const raw = provider(args, args.cert, args.key);
  const receipt = await raw.send("eth_getTransactionReceipt", [hash]);
  raw.destroy();
  return receipt.charterTransactionId;
}

const timer = setTimeout(() => {
  console.error(`timed out after ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(3);
}, OVERALL_TIMEOUT_MS);
main().then(
  () => {
    clearTimeout(timer);
    process.exit(0);
  },
  (error) => {
    console.error(error && error.stack ? error.stack : error);
    process.exit(1);
  },
);
