/* The version string every role reports (/v1/models, load reports, --version). */
const char *sl_version(void) { return "0.1.0"; }
