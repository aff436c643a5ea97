/**
 * Checks that a proposal is `{"actions": [{"name", "args"}, ...]}` with known actions and
 * well-typed arguments.
 */
export function validate(input) {
  try {
    checkedProposal(input);
  } catch (error) {
    if (error instanceof ArgumentError) {
      return { valid: false, description: error.message };
    }
    throw error;
  }
  return { valid: true, description: "OK" };
}
