/* constraint converters: placeholder filled below */
#include "constraint.h"
#include "sl_test.h"
int main(void) { return sl_test_done("test_constraint"); }
