/** Applies each action in order; the first failure fails the whole proposal. */
export function apply(proposal, proposalId) {
  for (const [definition, args] of checkedProposal(proposal)) {
    definition.apply(args, proposalId);
  }
}
