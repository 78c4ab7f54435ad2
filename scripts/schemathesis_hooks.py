"""Schemathesis hooks for the gateway's OpenAPI test (loaded through SCHEMATHESIS_HOOKS).

The document marks every list request's `page_token` with the string format
`aicore-page-token`: an opaque token, valid only as the `next_page_token` an earlier page
of the same listing returned (anything else is refused with INVALID_ARGUMENT naming
`page_token`). The only such token a stateless generator can know is the empty one (the
first page), so that is what valid requests carry; requests that break the schema still
get arbitrary values. Tokens that pages return are followed by the e2e tests of each
domain.
"""

import schemathesis
from hypothesis import strategies as st

schemathesis.openapi.format("aicore-page-token", st.just(""))
