/**
 * Strict majority of the active members: Accepted once more than half of them voted for,
 * Rejected once a majority can no longer be reached, Open otherwise. Only active members'
 * votes count, each once.
 */
export function resolve(proposal, proposerId, votes) {
  const active = new Set(activeMemberIds());
  const majority = Math.floor(active.size / 2) + 1;
  const counted = new Set();
  let yes = 0;
  let no = 0;
  for (const { member_id: memberId, vote } of votes) {
    if (!active.has(memberId) || counted.has(memberId) || typeof vote !== "boolean") {
      continue;
    }
    counted.add(memberId);
    if (vote) {
      yes += 1;
    } else {
      no += 1;
    }
  }
  if (yes >= majority) {
    return "Accepted";
  }
  if (no >= active.size - majority + 1) {
    return "Rejected";
  }
  return "Open";
}
