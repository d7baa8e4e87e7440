/* header_check.c: sov.h must compile on its own as strict C99/C11. */
#include "sov.h"

int sov_header_check(void);
int sov_header_check(void) { return (int)SOV_OK + (int)sizeof(sov_model_info); }
