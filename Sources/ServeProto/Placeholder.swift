// Placeholder until scripts/gen-protos.sh generates the control-plane messages.
