from wslog.cli import main

main()
